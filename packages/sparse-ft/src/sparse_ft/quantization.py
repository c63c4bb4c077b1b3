"""`quantize(model, "gptq" | "rtn", bits, ...)`: weight-only quantisation of every Linear in the
decoder blocks, with the same sequential calibration as `prune` (the official `llama_sequential`).

The first block's inputs are captured once; then block by block the Hessians of its Linears are
gathered (all from one forward of the block, or with `true_sequential` in groups of Linears that
share an input, [q, k, v] -> [o] -> [gate, up] -> [down], each after a fresh forward through the
already quantised ones), the Linears are quantised, and the quantised block's outputs feed the next.
Weights are fake-quantised in place (float weights on the grid) for evaluation; the returned
`QuantizeResult` holds integer codes + scales + zeros + group index, which `save_quantized` writes
as safetensors and `load_quantized` puts back into a fresh model, bit for bit.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from layerwise_core import find_decoder, load_safetensors, masked_copies, save_safetensors
from sparse_ft.calibration import (
    BlockInputs,
    block_linears,
    calibration_batches,
    capture_block_inputs,
    linear_inputs,
    run_block,
)
from sparse_ft.gptq import GPTQHessian, QuantizedWeight, gptq_quantize, rtn_quantize
from sparse_ft.pruning import _seen, _sequential_groups

__all__ = [
    "QUANTIZATION_METHODS",
    "QuantizeResult",
    "load_quantized",
    "quantize",
    "save_quantized",
]

QUANTIZATION_METHODS = ("gptq", "rtn")
_FILE = "quantized.safetensors"
_FORMAT = "sparse_ft.quantized/1"


@dataclass
class QuantizeResult:
    """What `quantize` did. Module names are full names (`model.layers.0.self_attn.q_proj`)."""

    method: str
    bits: int
    group_size: int
    sym: bool
    layers: dict[str, QuantizedWeight] = field(default_factory=dict)

    @property
    def errors(self) -> dict[str, float]:
        """GPTQ's sum ||err||^2 / 2 of each matrix (0 for RTN)."""
        return {name: q.error for name, q in self.layers.items()}


def _check(method: str, bits: int, calibration, calibration_masking: str) -> None:
    if method not in QUANTIZATION_METHODS:
        raise ValueError(f"method must be one of {QUANTIZATION_METHODS}, got {method!r}")
    if not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an integer in 2..8, got {bits!r}")
    if method == "gptq" and calibration is None:
        raise ValueError(
            "GPTQ needs calibration data: pass calibration=token ids [sequences, tokens] (the "
            "official drivers: 128 x 2048 tokens of C4), or use method='rtn'"
        )
    if calibration_masking not in ("none", "diffusion"):
        raise ValueError(
            f"calibration_masking must be 'none' or 'diffusion', got {calibration_masking!r}"
        )


@torch.no_grad()
def quantize(
    model: nn.Module,
    method: Literal["gptq", "rtn"] = "gptq",
    bits: int = 4,
    *,
    group_size: int = -1,
    sym: bool = False,
    act_order: bool = False,
    static_groups: bool = False,
    true_sequential: bool = False,
    calibration: torch.Tensor | Sequence[torch.Tensor] | None = None,
    batch_size: int = 1,
    blocksize: int = 128,
    percdamp: float = 0.01,
    mse: bool = False,
    damp_retries: int = 1,
    calibration_masking: Literal["none", "diffusion"] = "none",
    mask_token_id: int | None = None,
    mask_repeats: int = 4,
    seed: int = 0,
    reference_quirks: bool = False,
) -> QuantizeResult:
    """Quantise every nn.Linear of the decoder blocks in place (fake quantisation) with GPTQ or RTN.

    Defaults are the official `llama.py` CLI's where it has one (groupsize -1, asymmetric,
    act-order / static groups / true-sequential off, percdamp 0.01, one sequence per forward);
    its `--wbits` default 16 means "off", so `bits` defaults to GPTQ's main 4-bit setting.

    Args:
        model: a decoder-only LM (causal or masked-diffusion) that `find_decoder` understands.
        method: "gptq" (arXiv 2210.17323) or "rtn" (round to nearest on the same grid).
        bits: 2..8.
        group_size: -1 (a grid per row) or g (a grid per row and g consecutive input columns).
        sym, act_order, static_groups, blocksize, percdamp, mse, damp_retries, reference_quirks:
            see `sparse_ft.gptq_quantize`.
        true_sequential: quantise [q, k, v], then [o], [gate, up], [down] with the Hessians of each
            group taken after a fresh forward through the quantised ones (`--true-sequential`).
        calibration: token ids [sequences, tokens] (or a list of them); needed by GPTQ.
        batch_size: sequences per forward; the Hessian's running normalisation is per batch, as
            in the official driver at 1 (one sequence per forward); other sizes change only the
            rounding.
        calibration_masking: "none" (the study's GPTQ_VIRTUAL: plain tokens, also for diffusion
            LMs) or "diffusion" (DGPTQ: `mask_repeats` copies of every sequence, each with a
            fraction t ~ U[0, 1) of its tokens replaced by `mask_token_id`, default
            `model.config.mask_token_id`; `layerwise_core.masked_copies` with `seed`, the draws of
            the study's `mask_calibration_data`).

    Returns:
        QuantizeResult: codes, scales, zeros and group index of every quantised matrix.
    """
    _check(method, bits, calibration, calibration_masking)
    dmap = find_decoder(model)
    blocks = list(dmap.layers)
    prefix = dmap.spec.layers
    linears = [block_linears(block) for block in blocks]
    result = QuantizeResult(method, bits, group_size, sym)
    if method == "rtn":
        for i, mods in enumerate(linears):
            for name, lin in mods.items():
                weight, packed = rtn_quantize(
                    lin.weight, bits, group_size=group_size, sym=sym, mse=mse
                )
                lin.weight.data.copy_(weight)
                result.layers[f"{prefix}.{i}.{name}"] = packed
        return result

    if calibration_masking == "diffusion":
        if mask_token_id is None:
            mask_token_id = getattr(getattr(model, "config", None), "mask_token_id", None)
        if mask_token_id is None:
            raise ValueError(
                "calibration_masking='diffusion' needs the [MASK] id: pass mask_token_id= (the "
                "model's config has no mask_token_id)"
            )
        parts = calibration_batches(calibration, batch_size=1 << 30)  # type: ignore[arg-type]
        rows = torch.cat(parts)
        calibration = masked_copies(rows, mask_token_id, mask_repeats, seed=seed)
    was_training = model.training
    model.eval()
    try:
        batches = calibration_batches(calibration, batch_size)  # type: ignore[arg-type]
        inputs = capture_block_inputs(model, blocks[0], batches)
        for i, (block, mods) in enumerate(zip(blocks, linears)):
            groups = _sequential_groups(block, mods, inputs) if true_sequential else [list(mods)]
            for group in groups:
                sub = {n: mods[n] for n in group}
                hess = {n: GPTQHessian(m.in_features, m.weight.device) for n, m in sub.items()}
                with linear_inputs(sub, lambda n, x, hess=hess: hess[n].add_batch(x)):
                    run_block(block, inputs)
                for name, lin in sub.items():
                    full = f"{prefix}.{i}.{name}"
                    weight, packed = gptq_quantize(
                        lin.weight,
                        _seen(hess[name], full).hessian,
                        bits,
                        group_size=group_size,
                        sym=sym,
                        act_order=act_order,
                        static_groups=static_groups,
                        blocksize=blocksize,
                        percdamp=percdamp,
                        mse=mse,
                        damp_retries=damp_retries,
                        reference_quirks=reference_quirks,
                    )
                    lin.weight.data.copy_(weight)
                    result.layers[full] = packed
            inputs = BlockInputs(run_block(block, inputs), inputs.args, inputs.kwargs)
    finally:
        model.train(was_training)
    return result


def save_quantized(result: QuantizeResult, directory: str | Path) -> Path:
    """Write `directory/quantized.safetensors`: per matrix `<name>.codes` (uint8 [out, in]),
    `.scales` ([out, groups]), `.zeros` (uint8 [out, groups]) and `.g_idx` (int32 [in]); the
    method, bits, group size and symmetry in the metadata. Returns the file's path.

    Only the quantised matrices are stored: the rest of the model (embeddings, norms, head) comes
    from its own checkpoint, which `load_quantized` fills.
    """
    tensors: dict[str, torch.Tensor] = {}
    for name, q in result.layers.items():
        tensors[f"{name}.codes"] = q.codes
        tensors[f"{name}.scales"] = q.scales
        tensors[f"{name}.zeros"] = q.zeros
        tensors[f"{name}.g_idx"] = q.g_idx
    meta = {
        "format": _FORMAT,
        "method": result.method,
        "bits": str(result.bits),
        "group_size": str(result.group_size),
        "sym": json.dumps(result.sym),
        "errors": json.dumps(result.errors),
    }
    path = Path(directory) / _FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    save_safetensors(tensors, path, metadata=meta)
    return path


def load_quantized(model: nn.Module, directory: str | Path) -> QuantizeResult:
    """Set every matrix stored by `save_quantized` to its dequantised weights (in the model's dtype):
    the same fake-quantised model `quantize` left, bit for bit. Returns the stored result."""
    tensors, meta = load_safetensors(Path(directory) / _FILE)
    if meta.get("format") != _FORMAT:
        raise ValueError(
            f"{directory} does not hold a sparse_ft quantised model (format {meta.get('format')!r}); "
            "write it with sparse_ft.save_quantized"
        )
    errors = json.loads(meta["errors"])
    result = QuantizeResult(
        meta["method"], int(meta["bits"]), int(meta["group_size"]), json.loads(meta["sym"])
    )
    for name in errors:
        q = QuantizedWeight(
            tensors[f"{name}.codes"],
            tensors[f"{name}.scales"],
            tensors[f"{name}.zeros"],
            tensors[f"{name}.g_idx"],
            result.bits,
            errors[name],
        )
        try:
            linear = model.get_submodule(name)
        except AttributeError:
            raise ValueError(
                f"the model has no module {name!r} that {directory} quantised: load it into the "
                "same architecture"
            ) from None
        weight = linear.weight
        if tuple(weight.shape) != tuple(q.codes.shape):
            raise ValueError(
                f"{name}: the model's weight is {tuple(weight.shape)}, the stored codes "
                f"{tuple(q.codes.shape)}: load into the same model configuration"
            )
        weight.data.copy_(q.dequantize(weight.dtype).to(weight.device))
        result.layers[name] = q
    return result

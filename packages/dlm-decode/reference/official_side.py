"""Reference side of `nox -s reference_dlm`: the OFFICIAL LLaDA / Dream code on tiny random weights.

Runs in a venv with the transformers version the official code pins (see `noxfile.py`,
session `reference_dlm`). Nothing of the official code is copied: it is imported at run time from
checkouts given on the command line (NVlabs/Fast-dLLM's `llada/` and `dream/` folders, and
ML-GSAI/LLaDA's `generate.py`).

    python official_side.py --fast-dllm DIR --llada-generate FILE --out OUT

What it writes to OUT (read by `compare.py`, which runs in the current-transformers venv):

    llada/, llada_maskpred/, dream/   checkpoints in the released format: config.json (with the
                                      released `auto_map`) + model.safetensors, from the official
                                      classes `LLaDAModelLM` and `DreamModel`
    logits.safetensors                fp32 logits of the official forward on fixed inputs
    manifest.json                     versions, inputs, and every generation case: sampler, its
                                      arguments, the official tokens and NFE
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
import types
from pathlib import Path
from typing import Any

import torch

# Tiny configurations with the released checkpoints' keys (GSAI-ML/LLaDA-8B-Instruct and
# Dream-org/Dream-v0-Instruct-7B config.json); only the sizes and special ids are small.
LLADA_CONFIG: dict[str, Any] = {
    "activation_type": "silu",
    "alibi": False,
    "alibi_bias_max": 8.0,
    "attention_dropout": 0.0,
    "attention_layer_norm": False,
    "attention_layer_norm_with_affine": True,
    "bias_for_layer_norm": False,
    "block_group_size": 1,
    "block_type": "llama",
    "d_model": 64,
    "embedding_dropout": 0.0,
    "embedding_size": 384,
    "eos_token_id": 301,
    "flash_attention": False,
    "include_bias": False,
    "include_qkv_bias": False,
    "init_cutoff_factor": None,
    "init_device": "meta",
    "init_fn": "mitchell",
    "init_std": 0.02,
    "input_emb_norm": False,
    "layer_norm_type": "rms",
    "layer_norm_with_affine": True,
    "mask_token_id": 336,
    "max_sequence_length": 512,
    "mlp_hidden_size": 160,
    "mlp_ratio": 4,
    "multi_query_attention": None,
    "n_heads": 4,
    "n_kv_heads": 4,
    "n_layers": 3,
    "pad_token_id": 301,
    "precision": "amp_bf16",
    "residual_dropout": 0.0,
    "rms_norm_eps": 1e-05,
    "rope": True,
    "rope_full_precision": True,
    "rope_theta": 500000.0,
    "scale_logits": False,
    "vocab_size": 384,
    "weight_tying": False,
    "auto_map": {
        "AutoConfig": "configuration_llada.LLaDAConfig",
        "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
        "AutoModel": "modeling_llada.LLaDAModelLM",
    },
}
DREAM_CONFIG: dict[str, Any] = {
    "architectures": ["DreamModel"],
    "attention_dropout": 0.0,
    "bos_token_id": 300,
    "eos_token_id": 300,
    "hidden_act": "silu",
    "hidden_size": 64,
    "initializer_range": 0.02,
    "intermediate_size": 160,
    "mask_token_id": 310,
    "max_position_embeddings": 512,
    "max_window_layers": 3,
    "num_attention_heads": 4,
    "num_hidden_layers": 3,
    "num_key_value_heads": 2,
    "pad_token_id": 300,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000.0,
    "sliding_window": None,
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "use_cache": False,
    "use_sliding_window": False,
    "vocab_size": 320,
    "auto_map": {
        "AutoConfig": "configuration_dream.DreamConfig",
        "AutoModel": "modeling_dream.DreamModel",
    },
}
# Generation lengths, steps and thresholds of the cases (small: the whole run takes ~1 min on CPU).
GEN_LENGTH, BLOCK_LENGTH, PROMPT_LENGTH = 32, 8, 12
THRESHOLD = 0.5  # Fast-dLLM's threshold; the random models are less peaked than a trained one
MAX_FORWARDS = 400  # a released loop that never ends (a model predicting [MASK]) fails loudly


def _load_module(name: str, path: Path, package_dir: Path | None = None) -> types.ModuleType:
    """Import a file (or, with package_dir, a package) from a checkout under a chosen name."""
    locations = [str(package_dir)] if package_dir is not None else None
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=locations)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot import {path}: is it a Python file of the official checkout?")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _import_official(fast_dllm: Path, llada_generate: Path) -> dict[str, types.ModuleType]:
    for need in (
        fast_dllm / "llada" / "generate.py",
        fast_dllm / "dream" / "model",
        llada_generate,
    ):
        if not need.exists():
            raise SystemExit(
                f"{need} is missing: point LAYERWISE_FAST_DLLM / LAYERWISE_LLADA at it"
            )
    # Fast-dLLM's llada/generate.py does `from model.modeling_llada import LLaDAModelLM`: its
    # llada/model package is imported as `model`, Dream's as `dream_model` (both are `model/`).
    llada_pkg = _load_module(
        "model", fast_dllm / "llada/model/__init__.py", fast_dllm / "llada/model"
    )
    mods = {
        "llada_model": sys.modules["model.modeling_llada"],
        "llada_pkg": llada_pkg,
        "fast_generate": _load_module("fast_dllm_llada_generate", fast_dllm / "llada/generate.py"),
        "llada_generate": _load_module("ml_gsai_llada_generate", llada_generate),
        "dream_pkg": _load_module(
            "dream_model", fast_dllm / "dream/model/__init__.py", fast_dllm / "dream/model"
        ),
    }
    mods["dream_model"] = sys.modules["dream_model.modeling_dream"]
    return mods


def _randomize(model: torch.nn.Module, seed: int, head_std: float) -> None:
    """Every weight random (norm weights around 1, so a missing norm weight shows), the output
    head wider so that the tiny model is confident enough for threshold decoding to commit
    several tokens per step."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            noise = torch.randn(param.shape, generator=gen)
            if (param.ndim == 1 and "norm" in name) or name.endswith("ln_f.weight"):
                param.copy_(1.0 + 0.2 * noise)
            elif param.ndim == 1:  # biases
                param.copy_(0.1 * noise)
            elif name.endswith(("ff_out.weight", "lm_head.weight")) and "blocks" not in name:
                param.copy_(head_std * noise / param.shape[1] ** 0.5)
            else:
                param.copy_(noise / param.shape[-1] ** 0.5)


def _prompts(vocab: int, reserved: set[int], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (4, PROMPT_LENGTH), generator=gen)
    for r in reserved:  # no special id inside a prompt
        ids[ids == r] = (r + 7) % vocab
    return ids


class _ForwardCounter:
    """Counts the model's forwards and refuses to run past MAX_FORWARDS."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls = 0
        model.register_forward_pre_hook(self._hook)

    def _hook(self, module: torch.nn.Module, args: Any) -> None:
        self.calls += 1
        if self.calls > MAX_FORWARDS:
            raise RuntimeError(f"more than {MAX_FORWARDS} forwards: the released loop does not end")


def _llada_cases(mods: dict[str, types.ModuleType], out: Path, logits: dict) -> dict:
    cfg_cls, lm_cls = mods["llada_pkg"].LLaDAConfig, mods["llada_model"].LLaDAModelLM
    mask = LLADA_CONFIG["mask_token_id"]
    result: dict[str, Any] = {"models": {}, "cases": []}
    for name, maskpred in (("llada", False), ("llada_maskpred", True)):
        torch.manual_seed(0)
        model = lm_cls(cfg_cls(**LLADA_CONFIG), init_params=False).eval()
        _randomize(model, seed=1, head_std=6.0)
        if maskpred:  # [MASK] row = 1.4 x token 115's: some positions predict [MASK]
            with torch.no_grad():
                head = model.model.transformer.ff_out.weight
                head[mask] = 1.4 * head[115]
        model.save_pretrained(out / name, safe_serialization=True)
        result["models"][name] = {"path": name, "mask_token_id": mask, "logit_shift": 0}
        counter = _ForwardCounter(model)
        prompts = _prompts(LLADA_CONFIG["vocab_size"], {mask, 301}, seed=2)
        # Logits: a batch of full-length rows, some positions masked.
        x = prompts.clone()
        x[:, ::3] = mask
        with torch.no_grad():
            logits[f"{name}/x"] = x
            logits[f"{name}/logits"] = model(x, use_cache=False).logits.float()
            # The released modeling file ignores attention_mask (attn_mask=None): padding is
            # checked on our side against each row alone (RoPE is relative, so the shift of
            # positions by the padding does not change the logits).
            for row, length in enumerate((12, 7, 9)):
                logits[f"{name}/row{row}_x"] = x[row, -length:][None]
                logits[f"{name}/row{row}_logits"] = model(x[row, -length:][None]).logits.float()
        runs: list[tuple[str, str, dict[str, Any], torch.Tensor]] = []
        prompt1 = prompts[:1]
        gl, bl = GEN_LENGTH, BLOCK_LENGTH
        runs.append(("llada_generate", "LLaDA", dict(steps=gl, block_length=bl), prompts[:2]))
        runs.append(("llada_generate", "LLaDA", dict(steps=gl // 2, block_length=bl), prompt1))
        runs.append(("llada_generate", "LLaDA", dict(steps=gl // 4, block_length=gl), prompt1))
        if not maskpred:  # Fast-dLLM's loops never end when the top-1 masked position says [MASK]
            for fn, cache in (
                ("generate", None),
                ("generate_with_prefix_cache", "prefix"),
                ("generate_with_dual_cache", "dual"),
            ):
                for threshold, steps in ((THRESHOLD, gl), (None, gl // 2)):
                    kw = dict(steps=steps, block_length=bl, threshold=threshold, cache=cache)
                    runs.append((f"fast_dllm.{fn}", "FastDLLM", kw, prompt1))
        for sampler, ours, kwargs, prompt in runs:
            kw = {k: v for k, v in kwargs.items() if k != "cache"}
            empty = []
            fast = mods["fast_generate"]
            original = fast.get_transfer_index

            def recording(*args: Any, _orig=original, _empty=empty, **kwargs: Any) -> Any:
                x0, transfer = _orig(*args, **kwargs)
                _empty.append(int(transfer.sum() == 0))
                return x0, transfer

            fast.get_transfer_index = recording
            counter.calls = 0
            start = time.perf_counter()
            try:
                if sampler == "llada_generate":
                    tokens = mods["llada_generate"].generate(
                        model, prompt, gen_length=gl, temperature=0.0, mask_id=mask, **kw
                    )
                    nfe = counter.calls
                else:
                    fn = getattr(fast, sampler.split(".")[1])
                    tokens, nfe = fn(
                        model, prompt, gen_length=gl, temperature=0.0, mask_id=mask, **kw
                    )
            finally:
                fast.get_transfer_index = original
            case = {
                "model": name,
                "sampler": sampler,
                "ours": ours,
                "options": kwargs,
                "gen_length": gl,
                "prompt": prompt.tolist(),
                "tokens": tokens.tolist(),
                "nfe": int(nfe),
                "forwards": counter.calls,
                "empty_passes": sum(empty) if sampler != "llada_generate" else 0,
                "masks_left": int((tokens[:, prompt.shape[1] :] == mask).sum()),
                "seconds": round(time.perf_counter() - start, 3),
            }
            result["cases"].append(case)
            print(f"  {name:15s} {sampler:37s} {kwargs} nfe={nfe}", flush=True)
    return result


def _dream_cases(mods: dict[str, types.ModuleType], out: Path, logits: dict) -> dict:
    dream_model = mods["dream_model"]
    mask, pad = DREAM_CONFIG["mask_token_id"], DREAM_CONFIG["pad_token_id"]
    cfg = mods["dream_pkg"].DreamConfig(**DREAM_CONFIG)
    torch.manual_seed(0)
    model = dream_model.DreamModel(cfg).eval()
    _randomize(model, seed=3, head_std=6.0)
    model.save_pretrained(out / "dream", safe_serialization=True)
    counter = _ForwardCounter(model)
    result: dict[str, Any] = {
        "models": {"dream": {"path": "dream", "mask_token_id": mask, "logit_shift": 1}},
        "cases": [],
    }
    prompts = _prompts(DREAM_CONFIG["vocab_size"], {mask, pad}, seed=4)
    x = prompts.clone()
    x[:, 1::3] = mask
    lengths = (12, 7, 9, 12)
    attn = torch.zeros(x.shape, dtype=torch.long)
    for row, length in enumerate(lengths):
        attn[row, -length:] = 1
    xpad = x.masked_fill(attn == 0, pad)
    prompts_pad = prompts.masked_fill(attn == 0, pad)  # left-padded prompts (no [MASK] inside)
    # Dream's own padded call (diffusion_generate): a 4-D mask, query AND key real, tok_idx.
    mask4d = attn.bool()[:, None, None, :] & attn.bool()[:, None, :, None]
    tok_idx = (attn.cumsum(-1) - 1).masked_fill(attn == 0, 1)
    with torch.no_grad():
        logits["dream/x"] = x
        logits["dream/logits"] = model(x, "full", None).logits.float()
        logits["dream/xpad"] = xpad
        logits["dream/attention_mask"] = attn
        logits["dream/logits_padded"] = model(xpad, mask4d, tok_idx).logits.float()
        for row, length in enumerate(lengths):
            logits[f"dream/row{row}_x"] = x[row, -length:][None]
            logits[f"dream/row{row}_logits"] = model(x[row, -length:][None], "full", None).logits
    gl = GEN_LENGTH
    runs = [
        (dict(alg="origin", steps=gl), prompts[:1], None),
        (dict(alg="origin", steps=gl // 2), prompts[:2], None),
        (dict(alg="entropy", steps=gl), prompts[:1], None),
        (dict(alg="entropy", steps=gl // 4), prompts[:2], None),
        (dict(alg="maskgit_plus", steps=gl // 2), prompts[:1], None),
        (dict(alg="entropy", steps=gl // 2), prompts_pad[1:3], attn[1:3]),
        (dict(alg="origin", steps=gl // 2), prompts_pad[1:3], attn[1:3]),
    ]
    for seed, (kwargs, prompt, attention) in enumerate(runs):
        counter.calls = 0
        torch.manual_seed(100 + seed)
        start = time.perf_counter()
        res = model.diffusion_generate(
            prompt,
            attention_mask=attention,
            max_new_tokens=gl,
            output_history=False,
            return_dict_in_generate=True,
            temperature=0.0,
            mask_token_id=mask,
            pad_token_id=pad,
            **kwargs,
        )
        tokens = res.sequences
        result["cases"].append(
            {
                "model": "dream",
                "sampler": "diffusion_generate",
                "ours": "Dream",
                "options": kwargs,
                "seed": 100 + seed,
                "gen_length": gl,
                "prompt": prompt.tolist(),
                "attention_mask": None if attention is None else attention.tolist(),
                "tokens": tokens.tolist(),
                "nfe": counter.calls,
                "forwards": counter.calls,
                "empty_passes": 0,
                "masks_left": int((tokens[:, prompt.shape[1] :] == mask).sum()),
                "seconds": round(time.perf_counter() - start, 3),
            }
        )
        padded = "padded" if attention is not None else ""
        print(f"  dream           diffusion_generate {kwargs} {padded} nfe={counter.calls}")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fast-dllm", type=Path, required=True, help="NVlabs/Fast-dLLM checkout")
    parser.add_argument("--llada-generate", type=Path, required=True, help="ML-GSAI generate.py")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--source-info", default="", help="commit ids, recorded in the manifest")
    args = parser.parse_args()
    torch.set_num_threads(1)
    mods = _import_official(args.fast_dllm.resolve(), args.llada_generate.resolve())
    import transformers
    from safetensors.torch import save_file

    args.out.mkdir(parents=True, exist_ok=True)
    logits: dict[str, torch.Tensor] = {}
    print(f"official side: torch {torch.__version__}, transformers {transformers.__version__}")
    llada = _llada_cases(mods, args.out, logits)
    dream = _dream_cases(mods, args.out, logits)
    save_file(
        {k: v.detach().clone().contiguous() for k, v in logits.items()},
        str(args.out / "logits.safetensors"),
    )
    manifest = {
        "versions": {
            "python": sys.version.split()[0],
            "torch": torch.__version__,
            "transformers": transformers.__version__,
        },
        "sources": args.source_info,
        "threshold": THRESHOLD,
        "models": {**llada["models"], **dream["models"]},
        "cases": llada["cases"] + dream["cases"],
    }
    (args.out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    print(f"wrote {len(manifest['cases'])} cases and {len(logits)} tensors to {args.out}")


if __name__ == "__main__":
    main()

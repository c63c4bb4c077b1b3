"""Our side of `nox -s reference_dlm`: load what `official_side.py` wrote and compare.

Runs in the current-transformers venv with the workspace installed editable. The checkpoints
written by the official classes are loaded with `AutoModelForCausalLM.from_pretrained` (no
`trust_remote_code`: dlm_decode's native `LLaDAModelLM` / `DreamModel`), then

- logits: our forward on the official inputs vs the official fp32 logits (max abs diff < TOL),
  and a left-padded batch with an attention mask vs each row run alone (and, for Dream, vs
  Dream's own padded call);
- tokens: `dlm_decode.generate` with the matching strategy (`reference_quirks=True` where the
  strategy has it) vs the official sampler's output, which must be identical; NFE is printed
  beside the official count.

    python compare.py OUT [--tol 1e-4]

Prints a table; exits 1 on any logit difference above the tolerance or any token mismatch.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import torch

TOL = 1e-4


def _load_models(out: Path, manifest: dict[str, Any]) -> dict[str, torch.nn.Module]:
    from transformers import AutoModelForCausalLM

    import dlm_decode
    import dlm_decode.models.dream
    import dlm_decode.models.llada  # noqa: F401  (registers "llada" / "Dream" with the Auto classes)

    models = {}
    for name, info in manifest["models"].items():
        model = AutoModelForCausalLM.from_pretrained(out / info["path"], dtype=torch.float32)
        models[name] = model.eval()
    return models


def _max_diff(ours: torch.Tensor, ref: torch.Tensor) -> float:
    if ours.shape != ref.shape:
        raise SystemExit(f"shape mismatch: ours {tuple(ours.shape)} vs official {tuple(ref.shape)}")
    return float((ours.float() - ref.float()).abs().max())


def _padded(rows: list[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    length = max(r.shape[-1] for r in rows)
    x = torch.full((len(rows), length), pad, dtype=torch.long)
    attn = torch.zeros_like(x)
    for i, r in enumerate(rows):
        x[i, length - r.shape[-1] :] = r
        attn[i, length - r.shape[-1] :] = 1
    return x, attn


def compare_logits(
    models: dict[str, torch.nn.Module], tensors: dict[str, torch.Tensor]
) -> list[tuple[str, float]]:
    """(what, max abs diff) for every logit comparison."""
    from dlm_decode.adapters import as_masked_diffusion_lm

    rows_out: list[tuple[str, float]] = []
    with torch.no_grad():
        for name, model in models.items():
            ours = model(input_ids=tensors[f"{name}/x"]).logits
            rows_out.append(
                (
                    f"{name}: forward, batch of 4 (no padding)",
                    _max_diff(ours, tensors[f"{name}/logits"]),
                )
            )
            singles = sorted(k for k in tensors if k.startswith(f"{name}/row") and k.endswith("_x"))
            rows = [tensors[k][0] for k in singles]
            pad = int(model.config.pad_token_id)
            x, attn = _padded(rows, pad)
            lm = as_masked_diffusion_lm(model)
            for label, logits in (
                ("model(attention_mask=2-D)", model(input_ids=x, attention_mask=attn).logits),
                ("adapter raw_logits", lm.raw_logits(x, attn)),
            ):
                worst = 0.0
                for i, key in enumerate(singles):
                    ref = tensors[key.replace("_x", "_logits")][0]
                    worst = max(worst, _max_diff(logits[i, x.shape[1] - ref.shape[0] :], ref))
                rows_out.append((f"{name}: left-padded batch, {label} vs rows alone", worst))
            if f"{name}/logits_padded" in tensors:  # Dream's own padded call (4-D mask, tok_idx)
                xpad, amask = tensors[f"{name}/xpad"], tensors[f"{name}/attention_mask"]
                ref = tensors[f"{name}/logits_padded"]
                ours = model(input_ids=xpad, attention_mask=amask).logits
                real = amask.bool()
                rows_out.append(
                    (f"{name}: padded batch vs official padded call (real positions)",
                     _max_diff(ours[real], ref[real]))
                )  # fmt: skip
    return rows_out


def _strategy(case: dict[str, Any], quirks: bool = True) -> Any:
    """Our strategy for an official case; None when it has no `reference_quirks` to turn off."""
    from dlm_decode.strategies import Dream, FastDLLM, LLaDA

    opts = dict(case["options"])
    if case["ours"] == "LLaDA":
        kwargs = dict(steps=opts["steps"], block_length=opts["block_length"])
        cls = LLaDA
    elif case["ours"] == "FastDLLM":
        kwargs = dict(block_length=opts["block_length"], cache=opts["cache"])
        if opts["threshold"] is None:
            kwargs.update(threshold=None, steps=opts["steps"])
        else:
            kwargs.update(threshold=opts["threshold"])
        cls = FastDLLM
    elif case["ours"] == "Dream":
        kwargs = dict(steps=opts["steps"], alg=opts["alg"])
        cls = Dream
    else:
        raise SystemExit(f"unknown strategy {case['ours']!r} in the manifest")
    names = {f.name for f in dataclasses.fields(cls)}
    if "reference_quirks" in names:
        kwargs["reference_quirks"] = quirks
    elif not quirks:
        return None
    return cls(temperature=0.0, **kwargs)


def compare_generation(models: dict[str, torch.nn.Module], manifest: dict[str, Any]) -> list[dict]:
    from dlm_decode import generate

    results = []
    for case in manifest["cases"]:
        model = models[case["model"]]
        prompt = torch.tensor(case["prompt"])
        attn = case.get("attention_mask")
        attn = None if attn is None else torch.tensor(attn)
        ref = torch.tensor(case["tokens"])
        res: dict[str, Any] = {"case": case}
        for quirks in (True, False):  # False: informational (where our default differs)
            strategy = _strategy(case, quirks)
            if strategy is None:
                res["differing_default"] = None
                continue
            if "seed" in case:
                torch.manual_seed(case["seed"])  # Dream draws from the global RNG, as released
            gl = case["gen_length"]
            out = generate(model, prompt, strategy, gen_length=gl, attention_mask=attn)
            same_shape = out.sequences.shape == ref.shape
            differing = int((out.sequences != ref).sum()) if same_shape else -1
            if quirks:
                res.update(strategy=strategy, same=differing == 0, differing=differing)
                res["nfe"] = out.stats.nfe.tolist()
            else:
                res["differing_default"] = differing
        results.append(res)
    return results


def _describe(case: dict[str, Any]) -> str:
    opts = {k: v for k, v in case["options"].items() if v is not None}
    text = ", ".join(f"{k}={v}" for k, v in opts.items())
    batch = len(case["prompt"])
    padded = " padded" if case.get("attention_mask") else ""
    return f"{case['model']} {case['sampler']}({text}) B={batch}{padded}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder written by official_side.py")
    parser.add_argument("--tol", type=float, default=TOL, help="max abs fp32 logit difference")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import transformers
    from safetensors.torch import load_file

    transformers.utils.logging.disable_progress_bar()
    manifest = json.loads((args.out / "manifest.json").read_text())
    tensors = load_file(str(args.out / "logits.safetensors"))
    official = manifest["versions"]
    print(
        f"official: torch {official['torch']}, transformers {official['transformers']}  |  "
        f"ours: torch {torch.__version__}, transformers {transformers.__version__}"
    )
    if manifest.get("sources"):
        print(f"reference code: {manifest['sources']}")
    models = _load_models(args.out, manifest)
    failures = 0

    print(f"\nlogits (fp32, tolerance {args.tol:g})")
    for what, diff in compare_logits(models, tensors):
        ok = diff < args.tol
        failures += not ok
        print(f"  {'ok  ' if ok else 'FAIL'} max|diff| {diff:.2e}  {what}")

    print("\ngenerated tokens (dlm_decode.generate vs the official sampler, T=0)")
    header = (
        f"  {'':4} {'case':78} {'NFE official':>12} {'NFE ours':>9} {'empty':>5} {'quirks off':>10}"
    )
    print(header)
    for res in compare_generation(models, manifest):
        case = res["case"]
        failures += not res["same"]
        ours_nfe = "/".join(str(n) for n in sorted(set(res["nfe"])))
        status = "ok  " if res["same"] else f"FAIL ({res['differing']} tokens differ)"
        off = res["differing_default"]
        off = "-" if off is None else ("same" if off == 0 else f"{off} differ")
        print(
            f"  {status:4} {_describe(case):78} {case['nfe']:>12} {ours_nfe:>9} "
            f"{case['empty_passes']:>5} {off:>10}"
        )
        if not res["same"]:
            print(f"       ours: {res['strategy']}")
    print(
        "\n'empty': released cached passes that committed nothing (the extra pass after a "
        "block-start pass that decoded the whole block); NFE is per row, a batch counts each row;\n"
        "'quirks off': tokens of ours with reference_quirks=False (informational, '-': no such "
        "option)."
    )
    if failures:
        print(f"\n{failures} mismatch(es) against the official code")
        sys.exit(1)
    print("\nall logits within tolerance, all tokens identical")


if __name__ == "__main__":
    main()

"""NeuroTrails: sparse_ft's DST engine and multi-head model vs the OFFICIAL code, same inputs.

    LAYERWISE_NEUROTRAILS=/path/to/neurotrails python packages/sparse-ft/reference/neurotrails_check.py
    python packages/sparse-ft/reference/neurotrails_check.py --official /path/to/neurotrails

Not part of CI (`nox -s reference_neurotrails` runs it; docs/neurotrails.md, "Reference check").
The official code (github.com/bramgrooten/neurotrails, `language_modeling/`) is imported from a
checkout at run time, never copied: `sparselearning/core.py` (`Masking`), `sparselearning/decay.py`
(`CosineDecay`), `make_multi_head.py` (`TreeNetLlama`), `make_ensemble.py` (`FullEnsembleLlama`)
and `peft_pretraining/modeling_llama.py`. The path may be the repository's work tree, its
`language_modeling/` folder, or a git repository (bare or not): then HEAD's `language_modeling/` is
extracted with `git archive` into a temporary folder.

The official code hard-codes CUDA (`.cuda()` on every mask) and imports `wandb`: while the official
side runs, `Tensor.cuda` returns the tensor itself (CPU) and, when `wandb` is not installed, an
empty stand-in module is registered (the official code logs to it only with `--single_gpu`, which is
off here). Its own Llama (`peft_pretraining/modeling_llama.py`: own attention, rotary embedding and
RMSNorm; `NORM_TYPE=pre`, the script's setting) builds and runs under the current transformers.

Checks (max differences printed in a table; exit 1 when one exceeds its tolerance):
1. ERK densities (`Masking.init_sparse_masks`, "Multi_Output", the densities it prints) vs
   `erk_densities`, for the spec's shapes at d = 0.5 / 0.9 and the spec §9 multi-head model at 0.9
   and 0.45.
2. The cosine prune fraction: `CosineDecay(0.5, T, 0.005)` after t steps vs
   `cosine_prune_fraction(t, T)`, every t in 0..T.
3. Hard-magnitude prune + gradient regrow, one update on given tensors: the official
   `truncate_weights` vs `prune_and_regrow(prune="magnitude", growth="gradient")`: masks equal.
4. A DST trajectory: a tiny official TreeNetLlama under `Masking` (magnitude / gradient, Adam,
   update every 2 steps) and our MultiHeadForCausalLM under `DynamicSparsity(reference_quirks=True)`,
   started from the same weights and masks and fed the same gradients each step: masks equal after
   every update, weights and Adam moments equal at the end.
5. The soft-magnitude sampler: inclusion frequencies of each entry over many draws, the official
   `magnitude_soft_prune` vs `soft_magnitude_keep`, and both vs the exact P = |w|^T / sum for keep 1.
6. The multi-head forward on the same weights: official TreeNetLlama vs ours with
   `reference_quirks=True` (every head's logits); clean mode must differ (single final norm); the
   official FullEnsembleLlama vs ours with `ensemble=True`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import importlib.util
import io
import math
import os
import re
import subprocess
import sys
import tempfile
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

# spec §10 item 1 shapes; spec §9 tiny Llama (d 128, f 352, L 6, V 2048), K = 3, b = 4
SPEC_SHAPES = [(64, 64), (256, 64), (64, 256), (1000, 64)]
TINY = dict(vocab=2048, d=128, f=352, layers=6, heads=4, k=3, b=4)
TOLERANCES = {
    "erk": 1e-9,
    "cosine": 1e-12,
    "prune_regrow": 0,
    "trajectory_masks": 0,
    "trajectory_weights": 0.0,
    "soft_vs_official": 0.02,
    "soft_vs_exact": 0.015,
    "forward_quirks": 2e-5,
    "forward_ensemble": 2e-5,
}


# ---------------------------------------------------------------- the official code
def resolve_official(path: Path, workdir: Path) -> Path:
    """The official `language_modeling/` folder from a work tree, that folder, or a git repo."""
    for candidate in (path / "language_modeling", path):
        if (candidate / "sparselearning" / "core.py").is_file():
            return candidate
    probe = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        sys.exit(
            f"{path}: neither a NeuroTrails checkout (language_modeling/sparselearning/core.py) nor "
            "a git repository; set LAYERWISE_NEUROTRAILS to a clone of "
            "github.com/bramgrooten/neurotrails"
        )
    archive = subprocess.run(
        ["git", "-C", str(path), "archive", "HEAD", "language_modeling"],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(workdir)], input=archive.stdout, check=True)
    print(f"official code: {path} @ {probe.stdout.strip()[:12]} (git archive HEAD)")
    return workdir / "language_modeling"


@contextlib.contextmanager
def official_side(quiet: bool = True) -> Iterator[None]:
    """CPU stand-in for the official `.cuda()` calls, its prints swallowed."""
    original = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]
    sink = io.StringIO()
    try:
        with contextlib.redirect_stdout(sink) if quiet else contextlib.nullcontext():
            yield
    finally:
        torch.Tensor.cuda = original  # type: ignore[method-assign]


def import_official(folder: Path) -> types.SimpleNamespace:
    os.environ.setdefault("NORM_TYPE", "pre")  # scripts/train_llm.sh
    os.environ.setdefault("POST_NUM", "3")
    sys.path.insert(0, str(folder))
    import transformers  # noqa: F401  (before the wandb stand-in: accelerate probes wandb's spec)
    from peft_pretraining import modeling_llama

    if importlib.util.find_spec("wandb") is None:
        stub = types.ModuleType("wandb")
        stub.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
        stub.log = lambda *args, **kwargs: None  # type: ignore[attr-defined]
        sys.modules["wandb"] = stub
    import make_ensemble
    import make_multi_head
    from sparselearning import core, decay

    return types.SimpleNamespace(
        Masking=core.Masking,
        CosineDecay=decay.CosineDecay,
        TreeNetLlama=make_multi_head.TreeNetLlama,
        FullEnsembleLlama=make_ensemble.FullEnsembleLlama,
        LlamaConfig=modeling_llama.LlamaConfig,
    )


def masking_args(**overrides: Any) -> types.SimpleNamespace:
    """The official command-line arguments `Masking` reads (scripts/train_llm.sh values)."""
    args = dict(
        growth="gradient",
        prune="magnitude_soft",
        prune_rate=0.5,
        prune_rate_decay="cosine",
        density_decay="constant",
        initial_density=0.999,
        temperature_decay="constant",
        temperature=3.0,
        init_temperature=1.0,
        update_frequency=50,
        fix=False,
        num_training_steps=1000,
        density=0.9,
        dense_embedding=False,
        reinit="no",
        single_gpu=False,
    )
    args.update(overrides)
    return types.SimpleNamespace(**args)


def official_masking(off, module: nn.Module, density: float, **overrides: Any):
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    args = masking_args(density=density, **overrides)
    with official_side():
        mask = off.Masking(optimizer, args=args, device=torch.device("cpu"))
    sink = io.StringIO()
    with official_side(quiet=False), contextlib.redirect_stdout(sink):
        mask.add_module(module, density=density, sparse_init="Multi_Output")
    printed = {
        m.group(1): float(m.group(2))
        for m in re.finditer(r"layer: (\S+), shape: .*?, density: (\S+)", sink.getvalue())
    }
    return mask, optimizer, printed


# ---------------------------------------------------------------- our side
def tiny_llama_config(vocab=64, d=32, f=48, layers=4, heads=4):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=d,
        intermediate_size=f,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        hidden_act="silu",
    )


def our_multi_head(cfg, k: int, b: int | None, *, ensemble=False, quirks=False) -> nn.Module:
    from sparse_ft.multi_head import MultiHeadConfig, MultiHeadForCausalLM

    config = MultiHeadConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps,
        tie_word_embeddings=False,
        hidden_act="silu",
        num_output_heads=k,
        blocks_in_head=b,
        ensemble=ensemble,
        reference_quirks=quirks,
        attn_implementation="eager",
    )
    return MultiHeadForCausalLM(config).eval()


def official_to_ours(name: str) -> str | None:
    """Official TreeNetLlama / FullEnsembleLlama parameter name -> MultiHeadForCausalLM's."""
    rules = [
        (r"^backbone_model\.model\.(embed_tokens\..*)$", r"model.\1"),
        (r"^backbone_model\.model\.(layers\..*)$", r"model.\1"),
        (r"^head_model_(\d+)\.model\.(layers\..*|norm\..*)$", r"heads.\1.\2"),
        (r"^head_model_(\d+)\.(lm_head\..*)$", r"heads.\1.\2"),
        (r"^model_(\d+)\.model\.(embed_tokens\..*|layers\..*|norm\..*)$", r"heads.\1.\2"),
        (r"^model_(\d+)\.(lm_head\..*)$", r"heads.\1.\2"),
    ]
    for pattern, repl in rules:
        if re.match(pattern, name):
            return re.sub(pattern, repl, name)
    return None


def copy_official_weights(official: nn.Module, ours: nn.Module) -> dict[str, str]:
    """Copy every official parameter into ours; returns {official name: our name}; every one of
    our parameters must be covered."""
    mine = dict(ours.named_parameters())
    mapping = {}
    with torch.no_grad():
        for name, param in official.named_parameters():
            target = official_to_ours(name)
            if target is None or target not in mine:
                raise SystemExit(f"official parameter {name} has no counterpart ({target})")
            if mine[target].shape != param.shape:
                raise SystemExit(f"{name}: shape {tuple(param.shape)} vs ours {target}")
            mine[target].copy_(param)
            mapping[name] = target
    missing = set(mine) - set(mapping.values())
    if missing:
        raise SystemExit(f"our parameters without an official counterpart: {sorted(missing)}")
    return mapping


# ---------------------------------------------------------------- checks
def check_erk(off) -> tuple[float, list[str]]:
    from sparse_ft.dst import erk_densities

    def module_of(shapes):
        params = nn.ParameterDict(
            {f"p{i}": nn.Parameter(torch.zeros(s)) for i, s in enumerate(shapes)}
        )
        holder = nn.Module()
        holder.params = params
        return holder

    tiny_shapes = tiny_multi_head_shapes()
    cases = [
        ("spec 4 shapes", SPEC_SHAPES, 0.5),
        ("spec 4 shapes", SPEC_SHAPES, 0.9),
        ("spec 4 shapes", SPEC_SHAPES, 0.97),
        ("§9 multi-head", tiny_shapes, 0.9),
        ("§9 multi-head", tiny_shapes, 0.45),
    ]
    worst, notes = 0.0, []
    for label, shapes, density in cases:
        _, _, printed = official_masking(off, module_of(shapes), density)
        official = [printed[f"params.p{i}"] for i in range(len(shapes))]
        ours = erk_densities(shapes, density)
        diff = max(abs(a - b) for a, b in zip(official, ours))
        worst = max(worst, diff)
        dense = sum(1 for x in ours if x == 1.0)
        notes.append(f"{label} d={density}: max |Δ| {diff:.2e} ({dense} dense tensors)")
    return worst, notes


def tiny_multi_head_shapes() -> list[tuple[int, int]]:
    """Every masked tensor of the spec §9 multi-head model (K 3, b 4, s 2)."""
    v, d, f = TINY["vocab"], TINY["d"], TINY["f"]
    block = [(d, d)] * 4 + [(f, d), (d, f), (f, d)]
    s = TINY["layers"] - TINY["b"]
    shapes = [(v, d)] + block * s
    for _ in range(TINY["k"]):
        shapes += block * TINY["b"] + [(v, d)]
    return shapes


def check_cosine(off, total: int = 1000) -> tuple[float, list[str]]:
    from sparse_ft.dst import cosine_prune_fraction

    decay = off.CosineDecay(0.5, T_max=total, eta_min=0.005)
    worst = 0.0
    for t in range(total + 1):
        if t:
            decay.step()
        worst = max(worst, abs(decay.get_current_value() - cosine_prune_fraction(t, total)))
    return worst, [f"t = 0..{total}, p0 0.5 -> 0.005"]


def _prune_regrow_module(seed: int):
    g = torch.Generator().manual_seed(seed)
    holder = nn.Module()
    holder.a = nn.Linear(16, 12, bias=False)
    holder.b = nn.Linear(24, 8, bias=False)
    tensors = {}
    for name, param in holder.named_parameters():
        w = torch.randn(param.shape, generator=g)
        m = torch.rand(param.shape, generator=g) < 0.6
        grad = torch.randn(param.shape, generator=g)
        tensors[name] = (w * m, m, grad)
    return holder, tensors


def check_prune_regrow(off) -> tuple[float, list[str]]:
    """One official `truncate_weights` (magnitude, gradient, redistribution none, reinit no)
    on hand-set masks / weights / gradients vs `prune_and_regrow` per tensor."""
    from sparse_ft.dst import prune_and_regrow

    mismatched, notes = 0, []
    for seed, fraction in ((0, 0.5), (1, 0.3), (2, 0.05)):
        holder, tensors = _prune_regrow_module(seed)
        mask, _, _ = official_masking(off, holder, 0.6, prune="magnitude", prune_rate=fraction)
        with torch.no_grad():
            for name, param in holder.named_parameters():
                w, m, grad = tensors[name]
                param.copy_(w)
                param.grad = grad.clone()
                mask.masks[name] = m.float()
        with official_side():
            mask.init_density_per_layer()
            mask.init_prune_rate(fraction)
            mask.truncate_weights()
        for name in tensors:
            w, m, grad = tensors[name]
            target = math.ceil(mask.name2density[name] * m.numel())
            official_mask = mask.masks[name].bool()
            diffs = []
            for quirks in (True, False):
                new_mask, _ = prune_and_regrow(
                    w.clone(),
                    m.clone(),
                    grad.clone(),
                    target=target,
                    fraction=fraction,
                    prune="magnitude",
                    growth="gradient",
                    reference_quirks=quirks,
                )
                diffs.append(int((new_mask.bool() != official_mask).sum()))
            mismatched = max(mismatched, *diffs)
            n = int(m.sum())
            notes.append(
                f"seed {seed} p={fraction} {name}: nnz {n} -> {int(official_mask.sum())}, "
                f"positions differing from official: quirks {diffs[0]}, clean {diffs[1]}"
            )
    return float(mismatched), notes


def check_trajectory(off, steps: int = 12, every: int = 2) -> tuple[dict[str, float], list[str]]:
    """Official TreeNetLlama + Masking vs ours + DynamicSparsity(reference_quirks), same weights,
    same initial masks, same gradients at every step (computed on the official model)."""
    from sparse_ft.dst import DSTConfig, DynamicSparsity

    cfg = tiny_llama_config()
    torch.manual_seed(0)
    with official_side():
        official = off.TreeNetLlama(cfg, heads=3, blocks_in_head=2)
    mask, off_opt, _ = official_masking(
        off,
        official,
        0.6,
        prune="magnitude",
        growth="gradient",
        update_frequency=every,
        num_training_steps=steps,
    )
    ours = our_multi_head(cfg, 3, 2, quirks=True).train()
    mapping = copy_official_weights(official, ours)
    config = DSTConfig(
        density=0.6,
        update_every=every,
        prune="magnitude",
        growth="gradient",
        prune_fraction=0.5,
        reference_quirks=True,
    )
    dst = DynamicSparsity(ours, config, total_steps=steps, seed=0)
    state = dst.state_dict()
    for off_name, our_name in mapping.items():
        if off_name in mask.masks:
            m = mask.masks[off_name].bool()
            state["masks"][our_name] = m.clone()
            state["densities"][our_name] = mask.name2density[off_name]
            state["targets"][our_name] = math.ceil(mask.name2density[off_name] * m.numel())
    above = sum(state["targets"][mapping[n]] != int(m.sum()) for n, m in mask.masks.items())
    unmasked = set(state["masks"]) - {mapping[n] for n in mask.masks}
    if unmasked:
        raise SystemExit(f"masked by us but not by the official code: {sorted(unmasked)}")
    dst.load_state_dict(state)
    copy_official_weights(official, ours)  # our constructor's own initial masks zeroed others
    our_opt = torch.optim.Adam(ours.parameters(), lr=1e-3)
    params = dict(ours.named_parameters())
    g = torch.Generator().manual_seed(0)
    worst_mask, notes = 0, []
    for step in range(1, steps + 1):
        ids = torch.randint(0, cfg.vocab_size, (2, 16), generator=g)
        off_opt.zero_grad()
        with official_side():
            logits = official(ids)
        loss = sum(
            nn.functional.cross_entropy(z[:, :-1].reshape(-1, z.shape[-1]), ids[:, 1:].reshape(-1))
            for z in logits
        )
        loss.backward()
        with torch.no_grad():
            for off_name, param in official.named_parameters():
                params[mapping[off_name]].grad = param.grad.clone()
        with official_side():
            mask.step()
        our_opt.step()
        record = dst.step(our_opt)
        our_opt.zero_grad()
        if step % every == 0:
            diff = sum(
                int((dst.masks[mapping[n]].bool() != m.bool()).sum()) for n, m in mask.masks.items()
            )
            worst_mask = max(worst_mask, diff)
            p = record["prune_fraction"] if record else float("nan")
            notes.append(f"update at step {step} (p {p:.4f}): {diff} mask positions differ")
    weight_diff = max(
        float((params[mapping[n]].detach() - q.detach()).abs().max())
        for n, q in official.named_parameters()
    )
    moment_diff = max(
        float((our_opt.state[params[mapping[n]]][key] - off_opt.state[q][key]).abs().max())
        for n, q in official.named_parameters()
        for key in ("exp_avg", "exp_avg_sq")
    )
    notes.append(
        f"{len(mask.masks)} masked tensors; official target ceil(nnz/N * N) != nnz for {above}"
    )
    notes.append(
        f"after {steps} steps: weights max |Δ| {weight_diff:.2e}, Adam moments {moment_diff:.2e}"
    )
    return {
        "trajectory_masks": float(worst_mask),
        "trajectory_weights": max(weight_diff, moment_diff),
    }, notes


def check_soft(off, trials: int) -> tuple[dict[str, float], list[str]]:
    from sparse_ft.dst import soft_magnitude_keep

    holder = nn.Module()
    holder.w = nn.Linear(4, 2, bias=False)
    values = torch.tensor([[0.5, 1.0, 1.5, 2.0], [2.5, 3.0, 4.0, -5.0]])
    active = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)  # 4 and -5 masked
    mask, _, _ = official_masking(off, holder, 0.75, prune="magnitude_soft", temperature=3.0)
    with torch.no_grad():
        holder.w.weight.copy_(values)
    mask.masks["w.weight"] = active.float()
    mask.init_prune_rate(0.5)  # 6 active -> keep ceil(6 * 0.5) = 3
    torch.manual_seed(0)
    counts_off = torch.zeros(8)
    with official_side():
        for _ in range(trials):
            counts_off += mask.magnitude_soft_prune(holder.w.weight, "w.weight").reshape(-1).cpu()
    scores = (values * active).abs().reshape(-1)
    gen = torch.Generator().manual_seed(0)
    counts_ours = torch.zeros(8)
    for _ in range(trials):
        counts_ours[soft_magnitude_keep(scores, 3, 3.0, gen)] += 1
    freq_off, freq_ours = counts_off / trials, counts_ours / trials
    vs_official = float((freq_off - freq_ours).abs().max())
    masked_kept = float(freq_ours[~active.reshape(-1)].sum() + freq_off[~active.reshape(-1)].sum())
    # keep 1 of 2: P(keep the larger) = 2^3 / (1 + 2^3) = 8/9 (spec §10 item 5)
    pair = torch.tensor([1.0, 2.0])
    gen = torch.Generator().manual_seed(1)
    larger = sum(int(soft_magnitude_keep(pair, 1, 3.0, gen)[0]) == 1 for _ in range(trials))
    holder2 = nn.Module()
    holder2.w = nn.Linear(2, 1, bias=False)
    mask2, _, _ = official_masking(off, holder2, 0.99, prune="magnitude_soft", temperature=3.0)
    with torch.no_grad():
        holder2.w.weight.copy_(pair[None])
    mask2.masks["w.weight"] = torch.ones(1, 2)
    mask2.init_prune_rate(0.5)
    torch.manual_seed(1)
    larger_off = 0
    with official_side():
        for _ in range(trials):
            larger_off += int(mask2.magnitude_soft_prune(holder2.w.weight, "w.weight")[0, 1])
    exact = 8 / 9
    vs_exact = max(abs(larger / trials - exact), abs(larger_off / trials - exact))
    notes = [
        f"|w| {values.abs().reshape(-1).tolist()}, 2 masked, keep 3 of 6, T 3, {trials} draws each:"
        f" official {[round(x, 3) for x in freq_off.tolist()]},"
        f" ours {[round(x, 3) for x in freq_ours.tolist()]}; masked entries kept: {masked_kept}",
        f"keep 1 of |w| (1, 2): P(keep 2) official {larger_off / trials:.4f},"
        f" ours {larger / trials:.4f}, exact 8/9 = {exact:.4f}",
    ]
    if masked_kept:
        vs_official = float("inf")
    return {"soft_vs_official": vs_official, "soft_vs_exact": vs_exact}, notes


def check_forward(off) -> tuple[dict[str, float], list[str]]:
    cfg = tiny_llama_config()
    ids = torch.randint(0, cfg.vocab_size, (2, 12), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    with official_side():
        official = off.TreeNetLlama(cfg, heads=3, blocks_in_head=2).eval()
        with torch.no_grad():  # trained-looking norm gains: with gain 1, norm(norm(h)) ~ norm(h)
            for param in official.parameters():
                if param.dim() == 1:
                    param.uniform_(0.5, 1.5)
            ref = official(ids)
    notes, out = [], {}
    for quirks in (True, False):
        ours = our_multi_head(cfg, 3, 2, quirks=quirks)
        copy_official_weights(official, ours)
        with torch.no_grad():
            got = ours(input_ids=ids)
        diff = max(float((a - b).abs().max()) for a, b in zip(ref, got.head_logits))
        combined = float((got.logits - torch.stack(list(got.head_logits)).mean(0)).abs().max())
        notes.append(
            f"TreeNet K 3 b 2 L 4, reference_quirks={quirks}: head logits max |Δ| {diff:.2e};"
            f" combined - mean of heads {combined:.1e}"
        )
        if quirks:
            out["forward_quirks"] = max(diff, combined)
        else:
            out["clean_differs"] = diff
    torch.manual_seed(1)
    with official_side():
        official = off.FullEnsembleLlama(cfg, num_ensemble=3).eval()
        with torch.no_grad():
            ref = official(ids)
    ours = our_multi_head(cfg, 3, None, ensemble=True)
    copy_official_weights(official, ours)
    with torch.no_grad():
        got = ours(input_ids=ids)
    diff = max(float((a - b).abs().max()) for a, b in zip(ref, got.head_logits))
    notes.append(f"full ensemble K 3 L 4 (clean): logits max |Δ| {diff:.2e}")
    out["forward_ensemble"] = diff
    return out, notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", type=Path, default=os.environ.get("LAYERWISE_NEUROTRAILS"))
    parser.add_argument("--trials", type=int, default=20000, help="soft-sampler draws")
    args = parser.parse_args()
    if args.official is None:
        parser.error(
            "set LAYERWISE_NEUROTRAILS (or --official) to a checkout of "
            "github.com/bramgrooten/neurotrails"
        )
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        off = import_official(resolve_official(args.official.expanduser(), Path(tmp)))
        results: dict[str, float] = {}
        notes: dict[str, list[str]] = {}
        value, notes["erk"] = check_erk(off)
        results["erk"] = value
        value, notes["cosine"] = check_cosine(off)
        results["cosine"] = value
        value, notes["prune_regrow"] = check_prune_regrow(off)
        results["prune_regrow"] = value
        values, notes["trajectory"] = check_trajectory(off)
        results.update(values)
        values, notes["soft"] = check_soft(off, args.trials)
        results.update(values)
        values, notes["forward"] = check_forward(off)
        results.update(values)

    failed = []
    print("| check | max difference | tolerance | ok |\n|---|---|---|---|")
    for key, tol in TOLERANCES.items():
        ok = results[key] <= tol
        failed += [] if ok else [key]
        print(f"| {key} | {results[key]:.3g} | {tol:g} | {'yes' if ok else 'NO'} |")
    clean_ok = results["clean_differs"] > 1e-4
    failed += [] if clean_ok else ["clean_differs"]
    print(
        f"| clean mode differs from official | {results['clean_differs']:.3g} | > 1e-4 | "
        f"{'yes' if clean_ok else 'NO'} |"
    )
    for group, lines in notes.items():
        print(f"\n{group}:")
        for line in lines:
            print(f"  - {line}")
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
        sys.exit(1)
    print("\nall checks within tolerance")


if __name__ == "__main__":
    main()

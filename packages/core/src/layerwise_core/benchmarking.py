"""What every benchmark script needs: the machine's name, CPU timings as medians of interleaved
repeats (ratios measured in one run), and appending a dated section to docs/benchmarks.md."""

from __future__ import annotations

import datetime as _dt
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

__all__ = ["append_section", "interleaved_medians", "machine_description", "markdown_table"]


def machine_description() -> str:
    """GPU name when CUDA is available, else the CPU model and torch's thread count."""
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {torch.get_num_threads()} torch threads"


def interleaved_medians(
    fns: dict[str, Callable[[], object]], repeats: int = 7, warmup: int = 2
) -> dict[str, float]:
    """Median wall-clock seconds of each callable, run round-robin so drift hits all alike."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)


def append_section(
    path: str | Path, title: str, command: str, body: str, notes: Sequence[str] = ()
) -> str:
    """Append `## title (machine kind, date)` with machine, torch version, command and `body`."""
    kind = "GPU" if torch.cuda.is_available() else "CPU"
    lines = [
        f"## {title} ({kind}, {_dt.date.today().isoformat()})",
        "",
        f"- Machine: {machine_description()}",
        f"- torch {torch.__version__}",
        f"- Command: `{command}`",
        *[f"- {note}" for note in notes],
        "",
        body.rstrip(),
        "",
    ]
    text = "\n".join(lines) + "\n"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text("# Benchmarks\n\n")
    with path.open("a") as handle:
        handle.write(text)
    return text

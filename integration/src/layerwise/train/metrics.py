"""Run metrics: one JSON object per line in `metrics.jsonl`, mirrored to TensorBoard if installed."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from layerwise_core import CheckpointFileError, atomic_write

__all__ = ["TIMING_FIELDS", "MetricsLog", "read_metrics"]

# fields of a train record that measure time (wall clock, throughput): they differ between two
# runs of the same training, everything else is reproducible
TIMING_FIELDS = frozenset({"elapsed_s", "tokens_per_s", "mfu"})


class MetricsLog:
    """Append-only JSON-lines log, written by the main process only (others get a no-op log)."""

    def __init__(self, out_dir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True):
        self.path = Path(out_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._writer = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                except ImportError:  # the `tensorboard` extra is not installed
                    pass
                else:
                    self._writer = SummaryWriter(str(Path(out_dir) / "tensorboard"))

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after `step` (a resumed run re-logs them)."""
        if not (self.enabled and self.path.is_file()):
            return
        # a last line without its newline is an append cut short by a kill: its step is redone
        keep = [r for r in read_metrics(self.path, torn_tail=True) if r["step"] <= step]
        with atomic_write(self.path, "w") as handle:  # a kill now keeps the old log whole
            handle.write("".join(json.dumps(r) + "\n" for r in keep))

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self._writer is not None:
            split = record.get("split", "train")
            for name, value in record.items():
                if name not in ("step", "split") and isinstance(value, (int, float)):
                    self._writer.add_scalar(f"{split}/{name}", value, record["step"])
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


def read_metrics(path: str | os.PathLike, torn_tail: bool = False) -> list[dict[str, Any]]:
    """The records of `metrics.jsonl` (or of a run folder's); a line that is not a JSON record
    with a "step" raises a one-line `CheckpointFileError` naming the file and line. With
    `torn_tail`, an unreadable last line that lacks its newline (an append cut short) is dropped."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    data = path.read_bytes()
    lines = data.splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
            if torn_tail and number == len(lines) and not data.endswith(b"\n"):
                break
            raise CheckpointFileError(
                f"{path}:{number}: not a JSON metrics record ({str(err).splitlines()[0]}); "
                "delete that line or restore the file"
            ) from None
        if not isinstance(record, dict) or "step" not in record:
            raise CheckpointFileError(
                f"{path}:{number}: not a metrics record (no 'step'); delete that line or "
                "restore the file"
            )
        records.append(record)
    return records

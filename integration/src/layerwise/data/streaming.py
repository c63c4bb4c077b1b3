"""Streamed corpora: documents read lazily, tokenized and packed into blocks on the fly, resumable.

A streamed corpus (`hf:ORG/NAME`, or a local source with `data.streaming=true`) is never held in
memory or tokenized up front. The train split is read row by row, in stream order:

    row r of the stream -> held out if the source has no validation split and
                           hash_fraction(str(r)) < val_fraction          (layerwise.data.split)
                        -> skipped if its text is missing or blank
                        -> else tokenized: stream += ids + [EOS]
    block_i = stream[i*T : i*T + T + 1]                                  (as `PackedBlocks`)

so the blocks are exactly those `PackedBlocks` would cut from the same documents packed in memory.
When the stream ends (or after `max_documents` rows) it starts over (the next epoch) and packing
continues across the seam.

The position is `(epoch, rows read, the tokens after the last block boundary)` plus the `datasets`
iterator's own state at the start of the batch of rows being tokenized, so a resume reopens the
stream where it was (no re-reading of what came before), skips the few rows of that batch already
packed, and continues with the next unseen document: the blocks after a resume are those of an
uninterrupted run. Every process reads the whole stream and cuts the same global batches (each
takes its rows), so a global batch is the same whatever the number of processes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from layerwise.data.split import hash_fraction
from layerwise_core import UsageError

__all__ = ["DocumentStream", "StreamedBlocks"]

_STATE_FORMAT = "stream-v1"


@dataclass(frozen=True)
class DocumentStream:
    """The documents of a streamed corpus: where they come from and which are held out."""

    spec: str  # the data.source it was made from (for messages)
    open_split: Callable[[str], Any]  # split name -> a fresh `datasets.IterableDataset`
    field: str  # column holding the text
    val_fraction: float
    has_validation_split: bool  # the source has its own validation split (else: hash split)
    max_documents: int | None  # rows of the train split read per epoch (None: all)
    sample: int  # train documents `texts("train")` yields (what BPE trains on)
    validation_documents: int  # documents of the validation split

    def held_out(self, row: int) -> bool:
        """Row `row` of the train split belongs to validation (hash split, by row number)."""
        return not self.has_validation_split and hash_fraction(str(row)) < self.val_fraction

    def text_of(self, row: dict) -> str | None:
        """The row's text, None for no document (missing or blank); a missing column is an error."""
        if self.field not in row:
            raise UsageError(
                f"corpus source '{self.spec}': the rows have no field {self.field!r} (they have "
                f"{sorted(row)}): set data.text_field (or the source's :FIELD) to the text column"
            )
        text = row[self.field]
        if text is not None and not isinstance(text, str):
            raise UsageError(
                f"corpus source '{self.spec}': field {self.field!r} holds "
                f"{type(text).__name__}, not text: set data.text_field to the text column"
            )
        return text if text and text.strip() else None

    def rows(self, dataset) -> Iterator[tuple[int, dict]]:
        """(row number, row) of one epoch of the train split: its first `max_documents` rows."""
        for row, record in enumerate(dataset):
            if self.max_documents is not None and row >= self.max_documents:
                return
            yield row, record

    def texts(self, split: str) -> Iterator[str]:
        """`train`: its first `sample` documents; `validation`: its `validation_documents`."""
        if split == "train":
            count = self.sample
            rows = self.rows(self.open_split("train"))
            texts = (None if self.held_out(r) else self.text_of(record) for r, record in rows)
        elif self.has_validation_split:
            count = self.validation_documents
            texts = (self.text_of(record) for record in self.open_split("validation"))
        else:
            count = self.validation_documents
            rows = self.rows(self.open_split("train"))
            texts = (self.text_of(record) if self.held_out(r) else None for r, record in rows)
        if count <= 0:
            return
        for text in texts:
            if text is not None:
                yield text
                count -= 1
                if count == 0:
                    return


class StreamedBlocks:
    """Global batches of (T + 1)-token blocks packed on the fly from a `DocumentStream`.

    `next_global_batch(n)` -> LongTensor[n, T + 1]; `state_dict()` / `load_state_dict()` save and
    restore the position (JSON-serializable, for the checkpoint's trainer_state.json). See the
    module docstring for the packing and resume rules.
    """

    def __init__(self, stream: DocumentStream, tokenizer, block_size: int, read_rows: int = 64):
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.stream = stream
        self.tokenizer = tokenizer
        self.block_size = block_size
        self.read_rows = read_rows  # rows read and tokenized at once
        self.eos = tokenizer.eos_token_id
        self.epoch = 0
        self.rows = 0  # rows of this epoch whose tokens are packed (in blocks or the carry)
        self.blocks = 0  # blocks handed out, all epochs
        self._carry: list[int] = []  # tokens after the last block boundary
        self._pending: deque[tuple[int, list[int]]] = deque()  # tokenized, not yet packed
        self._dataset = None
        self._rows_iter: Iterator | None = None
        self._opened_at: dict | None = None  # the iterator state the open stream started from
        self._started = False  # the open iterator has yielded a row
        self._next_row = 0  # rows read from the open iterator (this epoch)
        self._mark: tuple[dict | None, int] = (None, 0)  # iterator state, row at the batch start
        self._epoch_had_document = False

    # -- reading -----------------------------------------------------------------------------

    def _open(self, state: dict | None, row: int) -> None:
        """Open this epoch's stream at `state` (the iterator state at row `row`; None: start)."""
        self._dataset = self.stream.open_split("train")
        if state is not None:
            self._dataset.load_state_dict(state)
        self._rows_iter = iter(self._dataset)
        self._opened_at = state
        self._started = False
        self._next_row = row

    def _iterator_state(self) -> dict | None:
        # `datasets` reports its loaded state only once the iterator has yielded a row
        return self._dataset.state_dict() if self._started else self._opened_at

    def _next_record(self) -> dict | None:
        """The next row of the open stream (None at its end or after `max_documents` rows)."""
        limit = self.stream.max_documents
        if limit is not None and self._next_row >= limit:
            return None
        record = next(self._rows_iter, None)
        if record is not None:
            self._started = True
            self._next_row += 1
        return record

    def _read(self) -> bool:
        """Read and tokenize the next batch of rows into `_pending`; False at the end of an epoch."""
        if self._rows_iter is None:
            self._open(None, 0)
        self._mark = (self._iterator_state(), self._next_row)
        rows, texts = [], []
        ended = False
        while len(rows) < self.read_rows:
            row = self._next_row
            record = self._next_record()
            if record is None:
                ended = True
                break
            text = None if self.stream.held_out(row) else self.stream.text_of(record)
            if text is not None:
                rows.append(row)
                texts.append(text)
        if texts:
            ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
            self._pending.extend(zip(rows, ids))
        return bool(texts) or not ended

    def _next_epoch(self) -> None:
        if not self._epoch_had_document:
            raise UsageError(
                f"corpus source '{self.stream.spec}' has no training document (every row is blank "
                "or held out): point data.source at a corpus with text"
            )
        self.epoch += 1
        self.rows = 0
        self._rows_iter = None
        self._epoch_had_document = False

    def _pack_next_document(self) -> None:
        while not self._pending:
            if not self._read():
                self._next_epoch()
        row, ids = self._pending.popleft()
        self._carry.extend(ids)
        self._carry.append(self.eos)
        self.rows = row + 1
        self._epoch_had_document = True

    def next_global_batch(self, n: int) -> torch.Tensor:
        """The next `n` blocks of the stream, a LongTensor [n, T + 1]."""
        T = self.block_size
        out = torch.empty(n, T + 1, dtype=torch.int64)
        start = 0  # blocks are cut from the carry at start, start + T, ...
        for i in range(n):
            while len(self._carry) - start < T + 1:
                self._pack_next_document()
            out[i] = torch.tensor(self._carry[start : start + T + 1], dtype=torch.int64)
            start += T
        del self._carry[:start]
        self.blocks += n
        return out

    # -- position ----------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Where the stream stands: enough to continue with the next unseen document."""
        state, mark_row = self._mark
        if self.rows < mark_row or self._rows_iter is None:  # nothing of the open batch packed
            state, mark_row = None, 0
        return {
            "format": _STATE_FORMAT,
            "source": self.stream.spec,
            "block_size": self.block_size,
            "epoch": self.epoch,
            "rows": self.rows,
            "blocks": self.blocks,
            "carry": list(self._carry),
            # the datasets iterator at row `iterator_row` (<= rows): reopened there on resume
            "iterator": state,
            "iterator_row": mark_row,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != _STATE_FORMAT:
            raise UsageError(
                "the checkpoint's data position is not that of a streamed corpus (it was trained "
                "on blocks held in memory): resume with the checkpoint's data.source and "
                "data.streaming"
            )
        if state["block_size"] != self.block_size:
            raise UsageError(
                f"the checkpoint's stream was cut into blocks of {state['block_size']} tokens, "
                f"this run's of {self.block_size}: resume with the same train.block_size"
            )
        self.epoch, self.rows, self.blocks = state["epoch"], state["rows"], state["blocks"]
        self._carry = [int(t) for t in state["carry"]]
        self._pending.clear()
        self._epoch_had_document = self.rows > 0
        iterator, row = state.get("iterator"), state.get("iterator_row", 0)
        if iterator is None:
            row = 0
        self._open(iterator, row)
        while self._next_row < self.rows:  # rows of the open batch already packed
            if self._next_record() is None:
                raise UsageError(
                    f"corpus source '{self.stream.spec}' ended after {self._next_row} rows, but "
                    f"the checkpoint had read {self.rows}: resume on the same data"
                )
        self._mark = (iterator, row)  # still a valid reopening point (row <= rows)

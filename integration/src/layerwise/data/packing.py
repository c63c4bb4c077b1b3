"""Packing: documents -> one token stream -> fixed-length blocks -> shuffled, resumable batches.

    stream  = doc_0 EOS doc_1 EOS ... doc_n EOS                  (corpus order)
    block_i = stream[i*T : i*T + T + 1]   for i < (len(stream) - 1) // T

A block holds T + 1 tokens: inputs `block[:-1]`, next-token targets `block[1:]`. Consecutive blocks
share one boundary token, so every token of the stream except the first is a target exactly once.
A stream tail shorter than T + 1 is dropped.

Training order: epoch e visits the blocks in `torch.randperm` order under a generator seeded from
`(seed, e)` alone, so the order is the same on every machine and in every process, and the reading
position `(epoch, index)` is all a checkpoint needs to continue exactly.

The training loop reads either order through one interface, `TrainingBatches`:
`ShuffledBlocks` (blocks held in memory, in the seeded order above) or
`layerwise.data.streaming.StreamedBlocks` (a stream packed on the fly, in stream order).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from layerwise_core import UsageError

__all__ = [
    "BlockSampler",
    "DataPosition",
    "PackedBlocks",
    "ShuffledBlocks",
    "TrainingBatches",
    "epoch_permutation",
    "pack_documents",
]


def pack_documents(token_ids: Iterable[list[int]], eos_id: int) -> torch.Tensor:
    """Concatenate tokenized documents, each followed by `eos_id`, into one int64 stream."""
    pieces = [torch.tensor([*ids, eos_id], dtype=torch.int64) for ids in token_ids]
    if not pieces:
        return torch.empty(0, dtype=torch.int64)
    return torch.cat(pieces)


class PackedBlocks:
    """Fixed-length views of a token stream: `blocks[i]` is a (T + 1,) int64 tensor (see module
    doc). The stream may be of any integer type (the token cache maps int32 files into memory)."""

    def __init__(self, stream: torch.Tensor, block_size: int):
        if stream.dim() != 1:
            raise ValueError(f"stream must be 1-D, got shape {tuple(stream.shape)}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.stream = stream
        self.block_size = block_size

    def __len__(self) -> int:
        return max(0, (len(self.stream) - 1) // self.block_size)

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self):
            raise IndexError(f"block {index} out of range for {len(self)} blocks")
        start = index * self.block_size
        return self.stream[start : start + self.block_size + 1].to(torch.int64)

    def gather(self, indices: torch.Tensor | list[int]) -> torch.Tensor:
        """Stack blocks into a (len(indices), T + 1) int64 batch."""
        return torch.stack([self[int(i)] for i in indices])


def epoch_permutation(num_blocks: int, seed: int, epoch: int) -> torch.Tensor:
    """The block order of one epoch: a permutation determined by `(seed, epoch)` only."""
    digest = hashlib.sha256(f"layerwise-shuffle\x00{seed}\x00{epoch}".encode()).digest()
    generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "big") >> 1)
    return torch.randperm(num_blocks, generator=generator)


@dataclass
class DataPosition:
    epoch: int = 0  # epochs completed
    index: int = 0  # blocks of the current epoch's permutation already handed out


class BlockSampler:
    """Hands out global batches of block indices, epoch after epoch, from a saved position.

    An epoch ends when fewer than `global_batch` blocks remain in its permutation; those are
    skipped (every global batch has the same size, so every optimizer step sees the same tokens).
    """

    def __init__(
        self, num_blocks: int, seed: int, shuffle: bool = True, *, global_batch: int | None = None
    ):
        if num_blocks < 1:
            raise UsageError(
                "no blocks to sample from: the corpus is shorter than one block; add text or "
                "lower train.block_size"
            )
        self.num_blocks = num_blocks
        if global_batch is not None:  # checked up front, before a run writes anything
            self._check_batch(global_batch)
        self.seed = seed
        self.shuffle = shuffle
        self.position = DataPosition()
        self._order: torch.Tensor | None = None
        self._order_epoch = -1

    def _epoch_order(self) -> torch.Tensor:
        if self._order_epoch != self.position.epoch:
            if self.shuffle:
                self._order = epoch_permutation(self.num_blocks, self.seed, self.position.epoch)
            else:
                self._order = torch.arange(self.num_blocks)
            self._order_epoch = self.position.epoch
        assert self._order is not None
        return self._order

    def _check_batch(self, global_batch: int) -> None:
        if global_batch > self.num_blocks:
            raise UsageError(
                f"a global batch of {global_batch} blocks (train.batch_size x train.grad_accum x "
                f"processes) exceeds the {self.num_blocks} blocks of the data: lower "
                "train.batch_size / train.grad_accum or train.block_size, or use more data"
            )

    def next_indices(self, global_batch: int) -> torch.Tensor:
        self._check_batch(global_batch)
        if self.position.index + global_batch > self.num_blocks:
            self.position = DataPosition(self.position.epoch + 1, 0)
        order = self._epoch_order()
        start = self.position.index
        self.position = DataPosition(self.position.epoch, start + global_batch)
        return order[start : start + global_batch]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.position.epoch, "index": self.position.index, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("seed", self.seed) != self.seed:
            raise ValueError(
                f"checkpoint data order was seeded with {state['seed']}, this run with {self.seed}: "
                "resume with the same train.seed"
            )
        self.position = DataPosition(int(state["epoch"]), int(state["index"]))


class TrainingBatches(Protocol):
    """What the training loop reads: global batches, and a position a checkpoint can hold."""

    def next_global_batch(self, n: int) -> torch.Tensor:
        """The next `n` blocks, a LongTensor [n, T + 1]; the same in every process."""
        ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ShuffledBlocks:
    """`TrainingBatches` over blocks held in memory, in `BlockSampler`'s seeded epoch order.

    A global batch larger than the data is refused here, before a run writes anything."""

    def __init__(self, blocks: PackedBlocks, seed: int, global_batch: int):
        self.blocks = blocks
        self.sampler = BlockSampler(len(blocks), seed, global_batch=global_batch)

    def next_global_batch(self, n: int) -> torch.Tensor:
        return self.blocks.gather(self.sampler.next_indices(n))

    def state_dict(self) -> dict[str, int]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "format" in state:  # a stream's position (layerwise.data.streaming)
            raise UsageError(
                "the checkpoint's data position is that of a streamed corpus, this run reads "
                "blocks held in memory: resume with the checkpoint's data.source and "
                "data.streaming"
            )
        self.sampler.load_state_dict(state)

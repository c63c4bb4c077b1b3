"""Sequential layer-by-layer calibration, as in Wanda / SparseGPT / OWL (`prepare_calibration_input`).

The calibration batches run through the model once, stopped at the first decoder block, whose
inputs (and the keyword arguments the model passes to every block: attention mask, position ids,
rotary embeddings) are kept. Then block by block: statistics of the block's Linear inputs are
gathered with forward hooks, the block is pruned, and its outputs, recomputed with the pruned
weights, become the next block's inputs. Only one block's activations are live at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

__all__ = [
    "BlockInputs",
    "block_linears",
    "calibration_batches",
    "capture_block_inputs",
    "linear_inputs",
    "packed_calibration",
    "run_block",
]


class _StopForward(Exception):
    pass


@dataclass
class BlockInputs:
    """Inputs of one decoder block per calibration batch: hidden states + the other arguments."""

    hidden: list[torch.Tensor] = field(default_factory=list)
    args: list[tuple[Any, ...]] = field(default_factory=list)
    kwargs: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.hidden)


def calibration_batches(
    calibration: torch.Tensor | Sequence[torch.Tensor], batch_size: int
) -> list[torch.Tensor]:
    """Token ids [N, T] (or a list of [T] / [b, T] tensors) as a list of [<= batch_size, T] batches."""
    if torch.is_tensor(calibration):
        if calibration.dim() == 1:
            calibration = calibration.unsqueeze(0)
        if calibration.dim() != 2 or calibration.dtype.is_floating_point:
            raise ValueError(
                "calibration must be integer token ids of shape [sequences, tokens], got "
                f"{tuple(calibration.shape)} {calibration.dtype}"
            )
        return list(calibration.split(batch_size))
    batches = []
    for item in calibration:
        batches += calibration_batches(item, batch_size)
    if not batches:
        raise ValueError("calibration holds no sequences")
    return batches


def packed_calibration(
    documents: Iterable[Sequence[int]], sequences: int, length: int = 128
) -> torch.Tensor:
    """Token ids [count, length'] for calibration: the documents concatenated and cut into blocks.

    length' = min(length, max(8, total tokens // sequences)) and count = min(sequences, total
    tokens // length'): short corpora give shorter blocks before they give fewer. The tail that
    does not fill a block is dropped.
    """
    stream = [int(t) for doc in documents for t in doc]
    length = min(length, max(8, len(stream) // max(1, sequences)))
    count = min(sequences, len(stream) // length)
    if count == 0:
        raise ValueError(
            f"{len(stream)} tokens are too few for one calibration sequence of {length}: give "
            "more documents"
        )
    return torch.tensor(stream[: count * length]).view(count, length)


def _first_tensor(output: Any) -> torch.Tensor:
    if torch.is_tensor(output):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    raise TypeError(f"cannot find the hidden states in a block output of type {type(output)}")


@torch.no_grad()
def capture_block_inputs(
    model: nn.Module, first_block: nn.Module, batches: Iterable[torch.Tensor]
) -> BlockInputs:
    """Run each batch through `model` up to `first_block` and keep that block's call arguments."""
    captured = BlockInputs()
    device = next(model.parameters()).device

    def hook(module, args, kwargs):
        if args:
            hidden, rest = args[0], tuple(args[1:])
        else:
            kwargs = dict(kwargs)
            hidden, rest = kwargs.pop("hidden_states"), ()
        captured.hidden.append(hidden.detach())
        captured.args.append(rest)
        captured.kwargs.append(dict(kwargs))
        raise _StopForward

    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in batches:
            with contextlib.suppress(_StopForward):
                model(input_ids=batch.to(device), use_cache=False)
    finally:
        handle.remove()
    if not captured.hidden:
        raise RuntimeError("the first decoder block never ran: is it part of the model's forward?")
    return captured


@torch.no_grad()
def run_block(block: nn.Module, inputs: BlockInputs) -> list[torch.Tensor]:
    """The block's output hidden states for every captured batch."""
    return [
        _first_tensor(block(hidden, *args, **kwargs))
        for hidden, args, kwargs in zip(inputs.hidden, inputs.args, inputs.kwargs)
    ]


def linear_inputs(
    modules: dict[str, nn.Linear], consumer: Callable[[str, torch.Tensor], None]
) -> _HookSet:
    """Context manager: forward hooks that pass each Linear's input to `consumer(name, x)`."""
    return _HookSet(modules, consumer)


class _HookSet:
    def __init__(
        self, modules: dict[str, nn.Linear], consumer: Callable[[str, torch.Tensor], None]
    ):
        self.modules = modules
        self.consumer = consumer
        self.handles: list[Any] = []

    def __enter__(self) -> _HookSet:
        for name, module in self.modules.items():

            def hook(_module, inputs, _output, name=name):
                self.consumer(name, inputs[0].detach())

            self.handles.append(module.register_forward_hook(hook))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def block_linears(block: nn.Module) -> dict[str, nn.Linear]:
    """Every nn.Linear inside a decoder block, by its name relative to the block."""
    return {name: m for name, m in block.named_modules() if isinstance(m, nn.Linear)}

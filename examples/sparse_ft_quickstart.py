"""sparse-ft in one minute on a tiny random Llama: LIFT with mask refreshes, save / reload, then
Wanda 2:4 pruning and SEFT that keeps the pattern.

    python examples/sparse_ft_quickstart.py
"""

from __future__ import annotations

import tempfile

import torch

import sparse_ft
from layerwise_core import tiny_llama


def train(model, steps: int, lr: float = 1e-2) -> list[float]:
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-6)
    losses = []
    for step in range(steps):
        ids = torch.randint(0, 128, (4, 32), generator=torch.Generator().manual_seed(step % 4))
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        changes = model.after_optimizer_step(opt)  # LIFT refresh / SEFT topology update when due
        if changes:
            print(f"  step {step + 1}: {changes}")
        losses.append(loss.item())
    return losses


def main() -> None:
    print("LIFT: Principal Weights of every block Linear, refreshed every 10 steps")
    lift = sparse_ft.get_sparse_model(
        tiny_llama(seed=0), sparse_ft.LiftConfig(lora_rank=2, filter_rank=4, update_interval=10)
    )
    lift.print_trainable_parameters()
    losses = train(lift, 30)
    print(f"  loss {losses[0]:.3f} -> {losses[-1]:.3f}; {lift.delta_stats()}")
    with tempfile.TemporaryDirectory() as folder:
        lift.save_pretrained(folder)
        again = sparse_ft.SparseFTModel.from_pretrained(tiny_llama(seed=0), folder)
    ids = torch.randint(0, 128, (1, 16))
    same = torch.equal(lift(input_ids=ids).logits, again(input_ids=ids).logits)
    print(f"  reloaded adapter gives identical logits: {same}")

    print("Wanda 2:4 pruning, then SEFT inside the 2:4 pattern")
    model = tiny_llama(seed=0)
    calibration = torch.randint(0, 128, (8, 64), generator=torch.Generator().manual_seed(9))
    result = sparse_ft.prune(model, "wanda", None, pattern="2:4", calibration=calibration)
    print(f"  sparsity {result.overall_sparsity:.2f}")
    seft = sparse_ft.get_sparse_model(
        model, sparse_ft.SeftConfig(budget_rank=2, update_interval=10, pattern="2:4")
    )
    losses = train(seft, 30)
    merged = seft.merge_and_unload()
    ok = all(sparse_ft.is_nm_sparse(merged.get_submodule(n).weight, 2, 4) for n in result.masks)
    print(f"  loss {losses[0]:.3f} -> {losses[-1]:.3f}; merged model still 2:4: {ok}")


if __name__ == "__main__":
    main()

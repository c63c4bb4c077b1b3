"""Exact resume: 10 steps straight == 5 steps, stop, resume, 5 more; bit for bit."""

from __future__ import annotations

import torch

from layerwise.train import latest_checkpoint, pretrain, read_metrics, read_model_state


def _losses(folder):
    return [(r["step"], r["split"], r["loss"], r.get("lr")) for r in read_metrics(folder)]


def _params(run_dir, step):
    return read_model_state(run_dir / "checkpoints" / f"step_{step}")


def test_stop_and_resume_is_bitwise_identical(small_data, tmp_path, tiny_run):
    common = ("train.save_every=5", "train.eval_every=5", "train.grad_accum=2", "train.log_every=3")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    pretrain(tiny_run(straight, *common), data=small_data)

    stopped = pretrain(tiny_run(resumed, *common), stop_at=5, data=small_data)
    assert stopped.step == 5 and stopped.final_eval is None
    assert latest_checkpoint(resumed / "checkpoints").name == "step_5"
    # the global RNG is disturbed between the two invocations: resume must restore it
    torch.manual_seed(999)
    assert pretrain(tiny_run(resumed, *common, "train.resume=true"), data=small_data).step == 10

    expected, got = _params(straight, 10), _params(resumed, 10)
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        assert torch.equal(value, got[name]), name
    # log_every=3 straddles the checkpoint at 5: the pending mean is carried over too
    assert _losses(straight) == _losses(resumed)
    train_steps = [step for step, split, *_ in _losses(straight) if split == "train"]
    assert train_steps == [3, 6, 9, 10]
    # training moved the parameters: the comparison is not between two initialisations
    assert not torch.equal(_params(resumed, 5)["lm_head.weight"], expected["lm_head.weight"])

"""The HF Trainer callback runs the controllers inside `Trainer.train()` with the Trainer's steps."""

import json

import pytest
import torch
from torch import nn

from layerwise_core import module_param_groups, tiny_llama

transformers = pytest.importorskip("transformers")
from spectral_opt.integrations import SpectralCallback, trainer_optimizer  # noqa: E402

SIZE = dict(hidden_size=64, intermediate_size=128, vocab_size=96)


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n=24, length=12):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(0, 96, (n, length), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def train(tmp_path, callback, types=(nn.Linear,), steps=6, resume=None, **extra):
    model = tiny_llama(seed=0, **SIZE)
    optimizer = torch.optim.AdamW(
        module_param_groups(model, module_types=types, weight_decay=0.1), lr=1e-3
    )
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        weight_decay=0.1,
        warmup_steps=2,
        lr_scheduler_type="cosine",
        report_to=[],
        logging_steps=100,
        use_cpu=True,
        disable_tqdm=True,
        **{"save_strategy": "no", **extra},
    )
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=Tokens(),
        optimizers=(optimizer, None),
        callbacks=[callback],
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer, optimizer


def test_alphadecay_callback(tmp_path):
    callback = SpectralCallback("alphadecay", interval=2)
    trainer, optimizer = train(tmp_path, callback)
    decay = callback.controller
    assert [t for t, _ in decay.history] == [0, 1, 3, 5]  # Trainer global steps 0..5
    for name, wd in decay.values.items():
        assert optimizer.param_groups[decay.group_of[name]]["weight_decay"] == wd
    assert min(decay.values.values()) == pytest.approx(0.6666 * 0.1)
    logged = [e for e in trainer.state.log_history if any(k.startswith("alpha/") for k in e)]
    assert [e["step"] for e in logged] == [0, 1, 3, 5]
    assert (
        logged[-1]["alpha/model.layers.1.mlp.down_proj"]
        == decay.alphas["model.layers.1.mlp.down_proj"]
    )


def test_llr_callback_sets_peaks_of_trainer_schedule(tmp_path):
    types = (nn.Linear, nn.Embedding)
    callback = SpectralCallback("llr", interval=2, ramp_steps=0, active_fraction=0.5)
    trainer, _ = train(tmp_path, callback, types=types)
    llr = callback.controller
    assert llr.total_steps == 6 and [t for t, _ in llr.history] == [0, 1]
    assert max(llr.peaks.values()) == pytest.approx(5e-3)
    scheduler = trainer.lr_scheduler
    for name, peak in llr.peaks.items():
        assert scheduler.base_lrs[llr.group_of[name]] == peak


def test_callback_state_is_json_and_rebuilds():
    callback = SpectralCallback(
        "llr", module_types=(nn.Linear, nn.Embedding), dtype=torch.float64, ratio=(1.0, 3.0)
    )
    state = json.loads(json.dumps(callback.state()))
    again = SpectralCallback(**state["args"])
    assert again.controller_kwargs == callback.controller_kwargs
    with pytest.raises(ValueError, match="choose one of"):
        SpectralCallback("tempbalance")


def test_resume_restores_the_controller(tmp_path):
    options = dict(
        save_strategy="steps", save_steps=3, restore_callback_states_from_checkpoint=True
    )
    full, _ = train(tmp_path / "a", SpectralCallback("alphadecay", interval=2), **options)
    resumed, _ = train(
        tmp_path / "a",
        SpectralCallback("alphadecay", interval=2),
        resume=str(tmp_path / "a" / "checkpoint-3"),
        **options,
    )

    def controller(trainer):
        (cb,) = [c for c in trainer.callback_handler.callbacks if isinstance(c, SpectralCallback)]
        return cb.controller

    a, b = controller(full), controller(resumed)
    assert [t for t, _ in b.history] == [0, 1, 3, 5]  # steps 0, 1 come from the checkpoint
    assert b.state_dict() == a.state_dict()


def trainer_args(tmp_path, steps=4):
    return transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=steps,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        weight_decay=0.1,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
    )


def test_trainer_default_optimizer_gets_an_error_that_names_the_fix(tmp_path):
    model = tiny_llama(seed=0, **SIZE)
    trainer = transformers.Trainer(
        model=model,
        args=trainer_args(tmp_path),
        train_dataset=Tokens(),
        callbacks=[SpectralCallback("llr", interval=2)],
    )
    with pytest.raises(
        ValueError, match=r"trainer_optimizer\(model, args, module_types=\(nn.Linear"
    ):
        trainer.train()


@pytest.mark.parametrize("method", ["alphadecay", "llr"])
def test_trainer_optimizer_is_the_default_one_split_per_module(tmp_path, method):
    args = trainer_args(tmp_path)
    types = (nn.Linear,) if method == "alphadecay" else (nn.Linear, nn.Embedding)
    model = tiny_llama(seed=0, **SIZE)
    default = transformers.Trainer(model=model, args=args).create_optimizer()
    optimizer = trainer_optimizer(model, args, module_types=types)
    assert type(optimizer) is type(default) and optimizer.defaults == default.defaults

    def decayed(opt):
        return {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}

    assert decayed(optimizer) == decayed(default)  # the Trainer's rule: no decay on norms
    options = {} if method == "alphadecay" else {"active_fraction": 1.0, "ramp_steps": 0}
    callback = SpectralCallback(method, interval=2, **options)
    trainer = transformers.Trainer(
        model=model,
        args=args,
        train_dataset=Tokens(),
        optimizers=(optimizer, None),
        callbacks=[callback],
    )
    trainer.train()
    controller = callback.controller
    assert controller.split_modules == [] and [t for t, _ in controller.history] == [0, 1, 3]
    key = "weight_decay" if method == "alphadecay" else "lr"
    top = max(controller.values.values())
    assert top == pytest.approx(3.0 * 0.1 if method == "alphadecay" else 5e-3)
    for name, value in controller.values.items():
        group = optimizer.param_groups[controller.group_of[name]]
        assert group["module_name"] == name
        if method == "alphadecay":
            assert group[key] == value
        else:  # the peak of the Trainer's schedule
            assert trainer.lr_scheduler.base_lrs[controller.group_of[name]] == value

"""Fault injection: what layerwise guarantees when a run is killed, a file is poisoned, two writers
meet on one folder, a resume changes the configuration, or files pile up (docs/reliability.md).

Tiny runs only (llama-tiny on the session's small corpus, 2-4 steps of 4 blocks): each test
compares against an independent reference (an uninterrupted run, the bytes of the folder before,
a marker file that the poison creates when it runs, the mode that `open()` gives).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from torch.optim.optimizer import register_optimizer_step_pre_hook

from layerwise.cli import main
from layerwise.train import (
    PretrainConfig,
    latest_checkpoint,
    load_checkpoint,
    load_saved_model,
    pretrain,
    read_metrics,
    read_model_state,
    save_checkpoint,
)
from layerwise.train.checkpoint import recover_checkpoints
from layerwise.train.metrics import TIMING_FIELDS
from layerwise_core import (
    CheckpointFileError,
    RunFolderBusyError,
    UsageError,
    load_safetensors,
    lock_run_folder,
)

STEPS = 2


def _cfg(out: Path, *overrides: str) -> PretrainConfig:
    """conftest's `tiny_run` (the data config of `small_data`), 2 steps, a checkpoint per step."""
    return PretrainConfig.from_dict(
        {
            "data": {"vocab_size": 512, "max_documents": 20},
            "model": {"preset": "llama-tiny"},
            "optimizer": {"lr": 3e-3, "betas": [0.9, 0.95], "weight_decay": 0.1},
            "schedule": {"warmup_steps": 1},
            "train": {
                "steps": STEPS,
                "batch_size": 4,
                "block_size": 64,
                "eval_every": 0,
                "eval_batches": 1,
                "save_every": 1,
                "log_every": 1,
                "out_dir": str(out),
            },
        },
        overrides=overrides,
    )


@pytest.fixture(scope="module")
def finished_run(small_data, tmp_path_factory):
    """A finished 2-step run (checkpoints step_1, step_2, final/); tests work on copies."""
    out = tmp_path_factory.mktemp("reliability") / "run"
    pretrain(_cfg(out), data=small_data)
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    return copy


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and "tensorboard" not in p.parts
    }


def _params(path: Path) -> dict[str, torch.Tensor]:
    return load_safetensors(path)[0]


def _assert_one_line(err: BaseException, *needles: str) -> None:
    message = str(err)
    assert "\n" not in message, message
    for needle in needles:
        assert needle in message, (needle, message)


# --- kill -9 in the middle of a checkpoint write ----------------------------------------------

_KILLED_WRITER = textwrap.dedent(
    """
    import os, signal, sys
    import torch
    torch.set_num_threads(int(sys.argv[2]))
    import layerwise.train.checkpoint as ckpt
    from layerwise.data import DataConfig, prepare_data
    from layerwise.train import PretrainConfig, pretrain

    class HalfThenSigkill(ckpt.FileSystemWriter):  # the step-4 write dies half-way
        def write_data(self, plan, planner):
            if ".step_4.tmp" not in str(self.path):
                return super().write_data(plan, planner)
            with open(self.path / "__0_0.distcp", "wb") as handle:
                handle.write(b"\\0" * 1000)
                handle.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    ckpt.FileSystemWriter = HalfThenSigkill
    cfg = PretrainConfig.from_yaml(sys.argv[1])
    pretrain(cfg, data=prepare_data(cfg.data, cfg.train.block_size))
    """
)


def test_sigkill_during_a_checkpoint_write_then_resume_is_bitwise_equal(small_data, tmp_path):
    common = ("train.steps=4", "train.save_every=2", "schedule.warmup_steps=2")
    straight = pretrain(_cfg(tmp_path / "straight", *common), data=small_data)
    killed = tmp_path / "killed"
    config = tmp_path / "killed.yaml"
    config.write_text(yaml.safe_dump(_cfg(killed, *common).to_dict()))
    proc = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(config), str(torch.get_num_threads())],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    debris = killed / "checkpoints" / ".step_4.tmp"
    assert (debris / "state" / "__0_0.distcp").stat().st_size == 1000
    assert latest_checkpoint(killed / "checkpoints").name == "step_2"  # the old one is intact

    resumed = pretrain(_cfg(killed, *common, "train.resume=true"), data=small_data)
    assert resumed.step == straight.step == 4
    assert not debris.exists()  # the leftovers of the killed write are gone
    want = _params(tmp_path / "straight" / "final" / "model.safetensors")
    got = _params(killed / "final" / "model.safetensors")
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), name

    def records(folder):  # every field but the wall time and throughput
        return [
            {k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in read_metrics(folder)
        ]

    assert records(killed) == records(tmp_path / "straight")
    history = [json.loads(line) for line in (killed / "history.jsonl").read_text().splitlines()]
    assert [(h["event"], h["step"]) for h in history] == [("start", 0), ("resume", 2)]


# --- no code runs from any file a resume or a load reads ---------------------------------------


class _Poison:
    """Unpickling it calls os.mkdir(marker): how a malicious checkpoint runs code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def _poison(path: Path, marker: Path) -> None:
    if path.suffix == ".pt":  # torch's own (zip) format, as torch.save writes it
        torch.save({"state": _Poison(marker)}, path)
    elif path.suffix == ".distcp":  # a shard: items read by offset, each loaded on its own
        _poison_shard(path, marker)
    else:  # a whole line (a torn last line of metrics.jsonl would be dropped, not read)
        path.write_bytes(pickle.dumps(_Poison(marker)) + b"\n")


def _bytes_items(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of the non-tensor items (optimizer hyper-parameters) of a DCP shard: DCP's
    default planner loads them with an unrestricted `torch.load`."""
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    from layerwise.train.checkpoint import _read_metadata

    metadata = _read_metadata(path.parent)
    return [
        (info.offset, info.length)
        for index, info in metadata.storage_data.items()
        if info.relative_path == path.name
        and isinstance(metadata.state_dict_metadata[index.fqn], BytesStorageMetadata)
    ]


def _poison_shard(path: Path, marker: Path) -> None:
    """Every non-tensor item of a DCP shard replaced by a pickle that runs code when loaded."""
    data = bytearray(path.read_bytes())
    payload = pickle.dumps(_Poison(marker))
    items = _bytes_items(path)
    assert items and all(length >= len(payload) for _, length in items)
    for offset, length in items:
        data[offset : offset + length] = payload.ljust(length, b"\0")
    path.write_bytes(bytes(data))


RESUME_READS = [
    "checkpoints/step_2/scheduler.pt",
    "checkpoints/step_2/rng_rank0.pt",
    "checkpoints/step_2/state/.metadata",
    "checkpoints/step_2/state/__0_0.distcp",
    "checkpoints/step_2/trainer_state.json",
    "checkpoints/step_2/config.yaml",
    "checkpoints/latest",
    "metrics.jsonl",
]


def _unrestricted_shard_load(path: Path) -> None:
    """What DCP's default planner does with a shard's non-tensor item."""
    import io

    offset, length = _bytes_items(path)[0]
    with open(path, "rb") as handle:
        handle.seek(offset)
        with contextlib.suppress(RuntimeError):  # "invalid magic number", after the poison ran
            torch.load(io.BytesIO(handle.read(length)), weights_only=False)


@pytest.mark.parametrize("name", RESUME_READS)
def test_a_poisoned_file_refuses_the_resume_without_running(run_copy, small_data, tmp_path, name):
    marker = tmp_path / "marker"
    _poison(run_copy / name, marker)
    # the poison is real: unpickling it unrestricted creates the marker
    with open(run_copy / name, "rb") as handle:
        if name.endswith(".pt"):
            torch.load(handle, weights_only=False)
        elif name.endswith(".distcp"):
            _unrestricted_shard_load(run_copy / name)
        else:
            pickle.load(handle)
    assert marker.is_dir()
    marker.rmdir()
    with pytest.raises(UsageError) as err:
        pretrain(_cfg(run_copy, "train.resume=true", "train.steps=3"), data=small_data)
    assert not marker.exists()
    _assert_one_line(err.value, str(run_copy / name))
    assert "resume" not in (run_copy / "history.jsonl").read_text()


def test_a_yaml_config_that_would_run_code_is_refused(run_copy, small_data, tmp_path):
    marker = tmp_path / "marker"
    (run_copy / "checkpoints" / "step_2" / "config.yaml").write_text(
        f"!!python/object/apply:os.mkdir [{str(marker)!r}]\n"
    )
    with pytest.raises(CheckpointFileError) as err:
        pretrain(_cfg(run_copy, "train.resume=true"), data=small_data)
    assert not marker.exists()
    _assert_one_line(err.value, "step_2/config.yaml")


@pytest.mark.parametrize("name", ["scheduler.pt", "rng_rank0.pt", "state/.metadata"])
def test_load_checkpoint_refuses_a_poisoned_file_before_touching_the_rng(
    finished_run, tmp_path, name
):
    folder = tmp_path / "step_2"
    shutil.copytree(finished_run / "checkpoints" / "step_2", folder)
    marker = tmp_path / "marker"
    _poison(folder / name, marker)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with pytest.raises(CheckpointFileError) as err:
        load_checkpoint(folder)
    assert not marker.exists()
    assert torch.equal(torch.get_rng_state(), before)
    _assert_one_line(err.value, str(folder / name))


@pytest.mark.parametrize("name", ["model.safetensors", "pytorch_model.bin", "config.yaml"])
def test_loading_a_saved_model_never_runs_a_poisoned_file(run_copy, tmp_path, name):
    """`final/` and the run's config.yaml, as `layerwise probe` / `eval` load them."""
    marker = tmp_path / "marker"
    final = run_copy / "final"
    if name == "pytorch_model.bin":  # a pickle checkpoint in place of the safetensors file
        (final / "model.safetensors").unlink()
        torch.save({"model.embed_tokens.weight": _Poison(marker)}, final / name)
    elif name == "config.yaml":
        (run_copy / name).write_text(f"!!python/object/apply:os.mkdir [{str(marker)!r}]\n")
    else:
        _poison(final / name, marker)
    with pytest.raises(Exception):  # noqa: B017 - whatever the loader's error, no code ran
        load_saved_model(final)
    assert not marker.exists()


# --- two writers, and a finished run never replaced silently ----------------------------------


def test_a_second_writer_is_refused_at_once(finished_run, small_data, tmp_path, capsys):
    out = tmp_path / "busy"
    config = tmp_path / "busy.yaml"
    config.write_text(yaml.safe_dump(_cfg(out).to_dict()))
    with lock_run_folder(out):  # another run holds the folder (the lock is per open file)
        with pytest.raises(RunFolderBusyError) as err:
            pretrain(_cfg(out), data=small_data)
        _assert_one_line(err.value, str(out), f"pid {os.getpid()}")
        assert main(["pretrain", "--config", str(config)]) == 2
        line = capsys.readouterr().err.strip()
        assert "\n" not in line and "is in use by another layerwise run" in line
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing else written

        from layerwise.eval.depth import probe_saved_model
        from layerwise.finetune import FinetuneConfig, finetune

        busy = FinetuneConfig.from_dict({"train": {"out_dir": str(out)}})
        with pytest.raises(RunFolderBusyError):
            finetune(busy)
        with pytest.raises(RunFolderBusyError):
            probe_saved_model(finished_run / "final", out)
    assert not out.exists()  # the refused runs left nothing behind


def test_a_finished_run_is_replaced_only_with_overwrite(run_copy, small_data):
    before = _snapshot(run_copy)
    with pytest.raises(FileExistsError) as err:
        pretrain(_cfg(run_copy), data=small_data)
    _assert_one_line(err.value, "train.overwrite=true", "train.resume=true")
    assert _snapshot(run_copy) == before
    pretrain(_cfg(run_copy, "train.overwrite=true", "train.seed=1"), data=small_data)
    assert (
        _snapshot(run_copy)["checkpoints/step_2/state/__0_0.distcp"]
        != before["checkpoints/step_2/state/__0_0.distcp"]
    )
    history = [json.loads(x) for x in (run_copy / "history.jsonl").read_text().splitlines()]
    assert [(h["event"], h["replaced_run"]) for h in history] == [("start", True)]
    assert len(read_metrics(run_copy)) == STEPS + 1  # train records + the final validation


def test_existing_adapter_and_report_folders_need_overwrite(finished_run, tmp_path, monkeypatch):
    from layerwise.eval.depth import probe_saved_model
    from layerwise.finetune import FinetuneConfig, finetune
    from layerwise.quickstart import QuickstartConfig, run_quickstart

    ft = tmp_path / "ft"
    (ft / "adapter").mkdir(parents=True)
    (ft / "adapter" / "adapter.safetensors").write_bytes(b"trained")
    with pytest.raises(FileExistsError) as err:
        finetune(FinetuneConfig.from_dict({"train": {"out_dir": str(ft)}}))
    _assert_one_line(err.value, "adapter", "train.overwrite=true")
    assert (ft / "adapter" / "adapter.safetensors").read_bytes() == b"trained"

    report = tmp_path / "report"
    report.mkdir()
    (report / "depth_probe.md").write_text("earlier report")
    with pytest.raises(FileExistsError) as err:
        probe_saved_model(finished_run / "final", report)
    _assert_one_line(err.value, "--overwrite")
    assert main(["probe", "--model", str(finished_run / "final"), "--out", str(report)]) == 2

    quick = tmp_path / "quick"
    quick.mkdir()
    (quick / "report.md").write_text("earlier quickstart")
    with pytest.raises(FileExistsError) as err:
        run_quickstart(QuickstartConfig(), quick)
    _assert_one_line(err.value, "--overwrite")
    assert (quick / "report.md").read_text() == "earlier quickstart"


# --- resume drift ------------------------------------------------------------------------------

REFUSED = {
    "optimizer.lr=1e-3": "optimizer.lr: 0.003 -> 0.001",
    "optimizer.weight_decay=0.0": "optimizer.weight_decay: 0.1 -> 0.0",
    "model.norm=lns": "model.norm.scheme: 'pre_ln' -> 'lns'",
    "optimizer.name=spam": "optimizer.name: 'adamw' -> 'spam'",
    "train.seed=1": "train.seed: 0 -> 1",
    "model.overrides.hidden_size=128": "model.overrides.hidden_size: None -> 128",
    "train.steps=1": "train.steps: 2 -> 1",
}


@pytest.mark.parametrize("change", list(REFUSED))
def test_resume_refuses_an_unsafe_change_before_writing(run_copy, small_data, change):
    before = _snapshot(run_copy)
    with pytest.raises(UsageError) as err:
        pretrain(_cfg(run_copy, "train.resume=true", change), data=small_data)
    _assert_one_line(err.value, REFUSED[change], "a resume may change only train.steps")
    assert _snapshot(run_copy) == before  # config.yaml, history, metrics: untouched


def test_resume_drift_at_the_command_line_is_one_line_exit_2(run_copy, tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump(_cfg(run_copy).to_dict()))
    args = ["pretrain", "--config", str(config), "train.resume=true"]
    assert main([*args, "optimizer.lr=1e-3", "model.norm=lns"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert "model.norm.scheme: 'pre_ln' -> 'lns'; optimizer.lr: 0.003 -> 0.001" in err


def test_more_steps_are_allowed_recorded_and_final_is_the_longer_run(
    finished_run, run_copy, small_data
):
    stored = (run_copy / "config.yaml").read_bytes()
    result = pretrain(
        _cfg(run_copy, "train.resume=true", "train.steps=4", "train.log_every=2"),
        data=small_data,
    )
    assert result.step == 4
    assert (run_copy / "config.yaml").read_bytes() == stored  # the started configuration
    history = [json.loads(x) for x in (run_copy / "history.jsonl").read_text().splitlines()]
    assert history[-1]["event"] == "resume" and history[-1]["step"] == STEPS
    assert history[-1]["changes"] == {
        "train.steps": [2, 4],
        "train.log_every": [1, 2],
        "train.out_dir": [str(finished_run), str(run_copy)],  # the run folder was copied
    }
    ckpt_cfg = yaml.safe_load((run_copy / "checkpoints" / "step_4" / "config.yaml").read_text())
    assert ckpt_cfg["train"]["steps"] == 4  # each checkpoint records what it was trained with
    # final/ now holds the 4-step model, not the 2-step one it held before
    final = _params(run_copy / "final" / "model.safetensors")
    step_4 = read_model_state(run_copy / "checkpoints" / "step_4")
    step_2 = read_model_state(run_copy / "checkpoints" / "step_2")
    assert all(torch.equal(final[k], step_4[k]) for k in final)
    assert not all(torch.equal(final[k], step_2[k]) for k in final)


def test_a_longer_resume_stretches_stable_spams_cosine(small_data, tmp_path):
    # optimizer.total_steps: null = the run's length: after train.steps 2 -> 4 the cosine on
    # beta1 must span 4 steps (the param groups loaded from the checkpoint say 2)
    out = tmp_path / "run"
    pretrain(_cfg(out, "optimizer.name=stable_spam"), data=small_data)
    seen = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append({g["total_steps"] for g in opt.param_groups})
    )
    try:
        pretrain(
            _cfg(out, "optimizer.name=stable_spam", "train.resume=true", "train.steps=4"),
            data=small_data,
        )
    finally:
        handle.remove()
    assert seen[-2:] == [{4}, {4}]  # (a first call: the empty state materialised for loading)


# --- retention and leftovers --------------------------------------------------------------------


def test_keep_last_keeps_the_newest_checkpoints(small_data, tmp_path):
    out = tmp_path / "run"
    pretrain(_cfg(out, "train.steps=4", "train.keep_last=2"), data=small_data)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "latest",
        "step_3",
        "step_4",
    ]


def _save(root: Path, step: int, keep_last: int | None = None):
    model = torch.nn.Linear(2, 1)
    return save_checkpoint(
        root,
        step,
        model=model,
        optimizer=torch.optim.AdamW(model.parameters()),
        scheduler_state={},
        trainer_state={"data": {}},
        config_yaml="{}\n",
        keep_last=keep_last,
    )


def test_retention_never_deletes_the_resume_point_before_a_newer_checkpoint(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        _save(root, step, keep_last=1)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_3"]
    import layerwise.train.checkpoint as ckpt

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(ckpt, "torch_save_atomic", disk_full)
    with pytest.raises(OSError, match="No space"):
        _save(root, 4, keep_last=1)
    monkeypatch.undo()
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_3"]
    assert latest_checkpoint(root).name == "step_3"
    # a rolled-back `latest` (resume from step_3 while a later step_9 exists): step_9 is kept
    (root / "step_9").mkdir()
    _save(root, 4, keep_last=1)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_4", "step_9"]


def test_leftovers_of_killed_writes_are_recovered_at_the_next_start(run_copy, small_data):
    ckpts = run_copy / "checkpoints"
    (ckpts / ".step_3.tmp").mkdir()  # a checkpoint being written
    (ckpts / ".step_3.tmp" / "scheduler.pt").write_bytes(b"half")
    (ckpts / ".step_1.deleted.tmp").mkdir()  # retention cut short
    (ckpts / ".latest.x1y2.tmp").write_text("step_3")  # atomic_write's temp file
    (run_copy / ".final.ab12.tmp").mkdir()  # an atomic directory being filled
    os.rename(ckpts / "step_2", ckpts / ".step_2.old")  # killed between the two renames
    logged = read_metrics(run_copy)
    with (run_copy / "metrics.jsonl").open("a") as handle:  # killed in the middle of an append
        handle.write('{"step": 3, "split": "tr')
    with pytest.raises(FileNotFoundError, match="step_2"):
        latest_checkpoint(ckpts)  # `latest` names a folder that is not there (yet)
    result = pretrain(_cfg(run_copy, "train.resume=true"), data=small_data)
    assert result.step == STEPS  # resumed from the recovered step_2: nothing left to train
    assert sorted(p.name for p in ckpts.iterdir()) == ["latest", "step_1", "step_2"]
    assert not [p for p in run_copy.iterdir() if p.name.endswith(".tmp")]
    assert recover_checkpoints(ckpts) == []
    assert read_metrics(run_copy) == logged  # the torn record is gone, the others are kept


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_run_files_follow_the_umask(small_data, tmp_path, umask):
    out = tmp_path / "run"
    old = os.umask(umask)
    try:
        pretrain(_cfg(out, "train.steps=1"), data=small_data)
    finally:
        os.umask(old)
    files = [
        out / "config.yaml",
        out / "metrics.jsonl",
        out / "checkpoints" / "latest",
        out / "checkpoints" / "step_1" / "state" / ".metadata",
        out / "checkpoints" / "step_1" / "state" / "__0_0.distcp",
        out / "checkpoints" / "step_1" / "scheduler.pt",
        out / "checkpoints" / "step_1" / "hf" / "config.json",
        out / "final" / "model.safetensors",
    ]
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path
    step = out / "checkpoints" / "step_1"
    for path in (out, step, step / "state", step / "hf", out / "final"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o777 & ~umask, path

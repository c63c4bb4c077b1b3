"""Every user error of the `layerwise` command is one stderr line `layerwise: error: <what>: <fix>`
(asserted whole), exit status 2, and nothing written; a diverging run exits 3 and keeps its last
good checkpoint. A few cases run the real command in a subprocess (`python -m layerwise`), the
rest call `layerwise.cli.main` in-process. docs/reliability.md lists the cases."""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from layerwise.cli import main

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "a",
    "is",
    "that",
    "for",
    "it",
    "as",
    "was",
    "with",
    "be",
    "by",
    "on",
    "not",
    "he",
    "this",
    "are",
    "or",
    "his",
    "from",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A local text corpus: 60 paragraphs of 80 words (enough for a 300-token BPE)."""
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    paragraphs = [" ".join(rng.choice(WORDS) for _ in range(80)) + "." for _ in range(60)]
    path.write_text("\n\n".join(paragraphs))
    return path


def _run_config(tmp_path: Path, corpus: Path, out: Path, **train) -> Path:
    """A YAML file for a tiny pre-training run on `corpus` (2 steps unless `train` says more)."""
    cfg = {
        "data": {"source": f"text:{corpus}", "vocab_size": 300},
        "model": {"preset": "llama-tiny"},
        "optimizer": {"lr": 3e-3, "betas": [0.9, 0.95], "weight_decay": 0.1},
        "schedule": {"warmup_steps": 0},
        "train": {
            "steps": 2,
            "batch_size": 2,
            "block_size": 16,
            "eval_every": 0,
            "eval_batches": 1,
            "save_every": 0,
            "log_every": 1,
            "out_dir": str(out),
            **train,
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


_PROGRESS = re.compile(r"\d+%\||examples/s\]|it/s\]")  # tqdm bars of work done before


def _error_line(capsys, argv: list[str], status: int = 2) -> str:
    """main(argv) returns `status`, prints nothing on stdout and one error line on stderr; any
    other stderr line is a progress bar of work done before the error was found."""
    capsys.readouterr()  # what fixtures printed
    assert main(argv) == status
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = [line for line in captured.err.replace("\r", "\n").splitlines() if line.strip()]
    errors = [line for line in lines if not _PROGRESS.search(line)]
    assert len(errors) == 1, captured.err
    return errors[0]


def _subprocess(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "layerwise", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


# ---- through the real command (subprocess) ---------------------------------------------------


def test_malformed_yaml_names_file_line_and_column(tmp_path):
    # before: a 44-line yaml.parser.ParserError traceback, exit status 1
    bad = tmp_path / "run.yaml"
    bad.write_text("data:\n  source: shakespeare\n model: [\n")
    done = _subprocess(["pretrain", "--config", str(bad)], tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"layerwise: error: {bad}:3:2: invalid YAML (expected <block end>, but found "
        "'<block mapping start>'): fix the syntax there\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.yaml"]


def test_missing_corpus_path(tmp_path, corpus):
    # before: a FileNotFoundError traceback, exit status 1
    missing = tmp_path / "nope.txt"
    config = _run_config(tmp_path, corpus, tmp_path / "out")
    done = _subprocess(
        ["pretrain", "--config", str(config), f"data.source=text:{missing}"], tmp_path
    )
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        f"layerwise: error: corpus source 'text:{missing}': no file matches '{missing}' (looked "
        f"for a file, a folder or a glob from {tmp_path}): fix the path in data.source, or use "
        "data.source=shakespeare for the built-in corpus\n"
    )
    assert not (tmp_path / "out").exists()


def test_hub_id_typed_as_a_model_path(tmp_path):
    # before: a 92-line OSError traceback about the network, exit status 1
    done = _subprocess(["eval", "retrieval", "--model", "meta-llama/Llama-3-8B"], tmp_path)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (
        "layerwise: error: --model 'meta-llama/Llama-3-8B' is not a local folder (it looks like a "
        "Hugging Face hub id, and models are only read from disk): download it first, e.g. `hf "
        "download meta-llama/Llama-3-8B --local-dir models/Llama-3-8B`, then pass "
        "models/Llama-3-8B\n"
    )
    assert list(tmp_path.iterdir()) == []


# ---- pre-training inputs (in-process) -------------------------------------------------------


@pytest.mark.parametrize(("text", "what"), [("", "0 bytes"), ("\n\n   \n\n", "whitespace only")])
def test_empty_corpus(tmp_path, corpus, capsys, text, what):
    # before: datasets.exceptions.DatasetGenerationError, 41 lines, exit status 1
    empty = tmp_path / "empty.txt"
    empty.write_text(text)
    config = _run_config(tmp_path, corpus, tmp_path / "out")
    line = _error_line(capsys, ["pretrain", "--config", str(config), f"data.source=text:{empty}"])
    assert line == (
        f"layerwise: error: corpus source 'text:{empty}' is empty (1 file, {what}): put text in "
        "it or point data.source at another corpus"
    )
    assert not (tmp_path / "out").exists()


def test_corpus_shorter_than_one_block(tmp_path, corpus, capsys):
    # before: "no blocks to sample from" ValueError traceback, exit status 1
    short = tmp_path / "short"
    short.mkdir()
    for name in "xyz":  # one-byte documents: 2 go to train, as x EOS y EOS = 4 tokens
        (short / f"{name}.txt").write_text(name)
    config = _run_config(tmp_path, corpus, tmp_path / "out")
    argv = ["pretrain", "--config", str(config), f"data.source=text:{short}", "data.vocab_size=262"]
    assert _error_line(capsys, argv) == (
        f"layerwise: error: the train split of corpus 'text:{short}' holds 4 tokens, fewer than "
        "one block of train.block_size + 1 = 17: add text or lower train.block_size"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (  # before: accepted, the typo kept as an unused LlamaConfig attribute, exit status 0
            "model.overrides.num_hiden_layers=1",
            "invalid PretrainConfig: field 'model.overrides': unknown field "
            "'model.overrides.num_hiden_layers' (did you mean 'model.overrides.num_hidden_layers'?)"
            ": LlamaConfig has no such field; its fields are ",
        ),
        (  # before: TypeError traceback (vocab_size given twice to LlamaConfig)
            "model.overrides.vocab_size=100",
            "invalid PretrainConfig: field 'model.overrides': the vocabulary size comes from the "
            "tokenizer (data.tokenizer, data.vocab_size): remove model.overrides.vocab_size (got "
            "{'vocab_size': 100})",
        ),
        (  # before: accepted, trained to NaN, exit status 0
            "optimizer.lr=inf",
            "invalid PretrainConfig: field 'optimizer.lr': Input should be a finite number (got 'inf')",
        ),
        (
            "optimizer.weight_decay=nan",
            "invalid PretrainConfig: field 'optimizer.weight_decay': Input should be a finite number "
            "(got 'nan')",
        ),
        (  # before: torch's "Invalid beta parameter at index 0" traceback after data preparation
            "optimizer.betas=[1.5,0.9]",
            "invalid PretrainConfig: field 'optimizer.betas': Adam's betas are moment decay rates and "
            "must each be in [0, 1): use e.g. [0.9, 0.95] (got [1.5, 0.9])",
        ),
        (
            "optimizer.eps=0",
            "invalid PretrainConfig: field 'optimizer.eps': Input should be greater than 0 (got 0)",
        ),
    ],
)
def test_bad_config_values(tmp_path, corpus, capsys, override, message):
    config = _run_config(tmp_path, corpus, tmp_path / "out")
    line = _error_line(capsys, ["pretrain", "--config", str(config), override])
    if message.endswith("its fields are "):  # every field LlamaConfig declares follows
        from transformers import LlamaConfig

        fields = sorted(f.name for f in dataclasses.fields(LlamaConfig))
        message += f"{fields} (got {{'num_hiden_layers': 1}})"
    assert line == f"layerwise: error: {message}"
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, corpus):
    """A finished 2-step run (checkpoint at step 2): its folder and its YAML file."""
    root = tmp_path_factory.mktemp("finished")
    config = _run_config(root, corpus, root / "run")
    assert main(["pretrain", "--config", str(config)]) == 0
    return root / "run", config


def test_out_dir_that_already_holds_a_run(finished_run, capsys):
    # before: FileExistsError traceback, exit status 1
    out, config = finished_run
    before = _tree(out)
    line = _error_line(capsys, ["pretrain", "--config", str(config)])
    assert line == (
        f"layerwise: error: {out} already holds a run: set train.resume=true to continue it, "
        "train.overwrite=true to replace it, or choose another train.out_dir"
    )
    assert _tree(out) == before


@pytest.mark.parametrize(
    ("override", "changed"),
    [
        ("train.seed=1", "train.seed: 0 -> 1"),  # before: ValueError traceback
        # before: a 33-line RuntimeError (size mismatch) traceback from load_state_dict
        ("model.overrides.hidden_size=32", "model.overrides.hidden_size: None -> 32"),
    ],
)
def test_resume_with_another_seed_or_width(finished_run, capsys, override, changed):
    out, config = finished_run
    before = _tree(out)
    argv = ["pretrain", "--config", str(config), "train.resume=true", "train.steps=3", override]
    line = _error_line(capsys, argv)
    # the drift check (layerwise.train.pretrain) lists every change and every safe field
    head = (
        f"layerwise: error: cannot resume {out / 'checkpoints' / 'step_2'}: the configuration "
        "differs from the checkpoint's in "
    )
    assert line.startswith(head) and changed in line[len(head) :]
    assert line.endswith(
        ": resume with the checkpoint's values, or start a new run (another train.out_dir, or "
        "train.overwrite=true)"
    )
    assert _tree(out) == before


# ---- saved-model commands (in-process) ------------------------------------------------------


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny Llama with vocabulary 20 and a 35-id word-level tokenizer, in separate folders."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from layerwise_core import tiny_llama

    root = tmp_path_factory.mktemp("saved")
    tiny_llama(vocab_size=20).save_pretrained(root / "model")
    vocab = {"[UNK]": 0, "[EOS]": 1, **{f"w{i}": i + 2 for i in range(33)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", eos_token="[EOS]")
    tokenizer.save_pretrained(root / "tokenizer")
    return root


def test_missing_model_path(tmp_path, capsys):
    # before: a 72-line OSError traceback ("Repo id must be in the form ..."), exit status 1
    missing = tmp_path / "nope"
    line = _error_line(capsys, ["eval", "retrieval", "--model", str(missing)])
    assert line == (
        f"layerwise: error: --model '{missing}' does not exist: pass the folder that holds "
        "config.json (e.g. a run's final/)"
    )


def test_probe_of_a_hub_id_writes_no_report_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "report"
    line = _error_line(capsys, ["probe", "--model", "Qwen/Qwen2-0.5B", "--out", str(out)])
    assert line.startswith("layerwise: error: --model 'Qwen/Qwen2-0.5B' is not a local folder ")
    assert not out.exists()


def test_tokenizer_larger_than_the_model_vocabulary(saved, tmp_path, capsys):
    # before: "index out of range in self" IndexError deep in the embedding, exit status 1
    argv = ["eval", "retrieval", "--model", str(saved / "model")]
    line = _error_line(capsys, [*argv, "--tokenizer", str(saved / "tokenizer")])
    assert line == (
        f"layerwise: error: --tokenizer '{saved / 'tokenizer'}' has 35 tokens but the model "
        "embeds only 20 (ids 20..34 would index past its embedding table): pass the tokenizer the "
        "model was trained with (--tokenizer; default: the model's)"
    )


def test_model_folder_without_a_tokenizer(saved, capsys):
    line = _error_line(capsys, ["eval", "retrieval", "--model", str(saved / "model")])
    assert line.startswith(
        f"layerwise: error: --model '{saved / 'model'}' holds no tokenizer it can load ("
    )
    assert line.endswith("): save the tokenizer there, or pass --tokenizer FOLDER")


def test_bad_json_line_in_a_prompts_file(saved, tmp_path, capsys):
    # before: "layerwise eval decode: Expecting ',' delimiter: line 1 column 17 (char 16)", with
    # neither the file nor the line
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "w1 w2"}\n\n{"prompt": "w3" "answer": "w4"}\n')
    argv = ["eval", "decode", "--model", str(saved / "model"), "--prompts", str(prompts)]
    assert _error_line(capsys, argv) == (
        f"layerwise: error: {prompts}:3: not valid JSON (Expecting ',' delimiter at column 17): "
        "fix that line (one JSON object per line)"
    )
    prompts.write_text('{"prompt": "w1 w2", "answer": "w3"}\n{"prompt": "w4"}\n')
    assert _error_line(capsys, argv) == (
        f"layerwise: error: {prompts}:2: no 'answer' while other lines have one: give an "
        "'answer' on every line or on none"
    )


# ---- fine-tuning inputs (in-process) --------------------------------------------------------


def _finetune_config(tmp_path: Path, model: str, train: Path) -> Path:
    cfg = {
        "model": {"path": model},
        "data": {"train": str(train)},
        "finetune": {"method": "full"},
        "train": {"steps": 1, "batch_size": 1, "out_dir": str(tmp_path / "ft")},
    }
    path = tmp_path / "ft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_finetune_data_and_model_path_errors(saved, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train = tmp_path / "train.jsonl"
    train.write_text('{"instruction": "w1", "answer": "w2"}\nnot json\n')
    config = _finetune_config(tmp_path, str(saved / "model"), train)
    # before: ValueError traceback (30 lines), exit status 1
    assert _error_line(capsys, ["finetune", "--config", str(config)]) == (
        f"layerwise: error: {train}:2: not valid JSON (Expecting value at column 1): fix that line "
        "(one JSON object per line)"
    )
    train.write_text('{"instruction": "w1", "answer": "w2"}\n')
    argv = ["finetune", "--config", str(config), "model.path=meta-llama/Llama-3-8B"]
    # before: a 52-line OSError traceback about the network
    assert _error_line(capsys, argv) == (
        "layerwise: error: model.path 'meta-llama/Llama-3-8B' is not a local folder (it looks "
        "like a Hugging Face hub id, and models are only read from disk): download it first, e.g. "
        "`hf download meta-llama/Llama-3-8B --local-dir models/Llama-3-8B`, then pass "
        "models/Llama-3-8B"
    )
    argv = ["finetune", "--config", str(config), f"data.train={tmp_path / 'none.jsonl'}"]
    assert _error_line(capsys, argv) == (
        f"layerwise: error: data.train '{tmp_path / 'none.jsonl'}' does not exist: pass a "
        "JSON-lines file"
    )
    assert not (tmp_path / "ft").exists()


# ---- training that diverges: exit status 3, the last good checkpoint kept --------------------


def test_nan_loss_stops_before_the_update_and_keeps_the_last_good_checkpoint(
    tmp_path, corpus, capsys, monkeypatch
):
    # before: training went on with NaN weights, saved them, and exited with status 0
    from layerwise.train import PretrainConfig, load_checkpoint, pretrain, read_model_state

    pretrain_module = importlib.import_module("layerwise.train.pretrain")
    config = _run_config(tmp_path, corpus, tmp_path / "run", steps=6, save_every=2)
    # the reference: the same run stopped cleanly after step 4 (same LR schedule over 6 steps)
    clean_cfg = PretrainConfig.from_yaml(config, [f"train.out_dir={tmp_path / 'clean'}"])
    pretrain(clean_cfg, stop_at=4)
    clean = read_model_state(tmp_path / "clean" / "checkpoints" / "step_4")

    original, calls = pretrain_module._train_loss, []

    def nan_at_step_5(model, blocks):
        calls.append(1)
        loss = original(model, blocks)
        return loss * float("nan") if len(calls) == 5 else loss

    monkeypatch.setattr(pretrain_module, "_train_loss", nan_at_step_5)
    line = _error_line(capsys, ["pretrain", "--config", str(config)], status=3)
    step_4 = tmp_path / "run" / "checkpoints" / "step_4"
    assert line == (
        "layerwise: error: training diverged: the loss is nan at step 5; that update was not "
        f"applied and nothing of it was saved (the last good checkpoint, {step_4}, is intact): "
        "lower optimizer.lr, enable or tighten train.grad_clip, or lengthen the warm-up, then "
        "start "
        "the run again"
    )
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert checkpoints == ["latest", "step_2", "step_4"]
    assert not (tmp_path / "run" / "final").exists()
    assert load_checkpoint(step_4, restore_rng=False).step == 4
    kept = read_model_state(step_4)
    assert kept.keys() == clean.keys()
    for name, tensor in kept.items():  # the state of 4 clean steps, bit for bit
        assert torch.isfinite(tensor).all() and torch.equal(tensor, clean[name])
    steps = [json.loads(r)["step"] for r in (tmp_path / "run" / "metrics.jsonl").open()]
    assert steps == [1, 2, 3, 4]  # step 5 is not logged


def test_a_huge_learning_rate_diverges_with_status_3(tmp_path, corpus, capsys):
    # lr=1e3 (finite, so the config accepts it): weights blow up until the gradients are NaN
    config = _run_config(tmp_path, corpus, tmp_path / "run", steps=20, save_every=2)
    line = _error_line(capsys, ["pretrain", "--config", str(config), "optimizer.lr=1e3"], status=3)
    assert line.startswith("layerwise: error: training diverged: the ")
    latest = (tmp_path / "run" / "checkpoints" / "latest").read_text().strip()
    step = int(line.split(" at step ")[1].split(";")[0])
    assert latest == f"step_{2 * ((step - 1) // 2)}"  # the last save before the NaN step
    assert (
        f"(the last good checkpoint, {tmp_path / 'run' / 'checkpoints' / latest}, is intact)"
        in line
    )


def test_finetune_divergence_saves_nothing(saved, tmp_path, capsys):
    # a model whose final norm holds a NaN: the very first loss is NaN
    from transformers import AutoTokenizer

    from layerwise_core import tiny_llama

    model = tiny_llama(vocab_size=40, eos_token_id=1)
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    model.save_pretrained(tmp_path / "model")
    AutoTokenizer.from_pretrained(saved / "tokenizer").save_pretrained(tmp_path / "model")
    train = tmp_path / "train.jsonl"
    train.write_text(
        "".join(json.dumps({"instruction": "w1", "answer": f"w{i}"}) + "\n" for i in range(4))
    )
    config = _finetune_config(tmp_path, str(tmp_path / "model"), train)
    line = _error_line(capsys, ["finetune", "--config", str(config)], status=3)
    assert line == (
        "layerwise: error: training diverged: the loss is nan at step 1; that update was not "
        "applied and nothing of it was saved (fine-tuning saves at the end): lower optimizer.lr, "
        "enable or tighten train.grad_clip, or lengthen the warm-up, then start the run again"
    )
    assert not (tmp_path / "ft" / "final").exists() and not (tmp_path / "ft" / "adapter").exists()


def test_unexpected_errors_keep_their_traceback(tmp_path, corpus, monkeypatch):
    import layerwise.commands.pretrain

    def broken(cfg):
        raise RuntimeError("a bug, not a user error")

    monkeypatch.setattr(layerwise.commands.pretrain, "pretrain", broken)
    config = _run_config(tmp_path, corpus, tmp_path / "out")
    with pytest.raises(RuntimeError, match="a bug, not a user error"):
        main(["pretrain", "--config", str(config)])


def test_mix_ln_with_the_masked_diffusion_objective_is_refused(tmp_path, corpus, capsys):
    # before: accepted, then a traceback while the bidirectional model was built
    config = _run_config(tmp_path, corpus, tmp_path / "out")
    argv = ["pretrain", "--config", str(config), "objective=mdm", "model.norm=mix_ln"]
    line = _error_line(capsys, argv)
    assert line == (
        "layerwise: error: invalid PretrainConfig: model.norm=mix_ln needs a causal Llama, and objective=mdm trains a bidirectional one: "
        "use model.norm=lns or pre_ln with mdm"
    )
    assert not (tmp_path / "out").exists()

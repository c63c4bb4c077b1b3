"""`layerwise.finetune`: every method trains on instruction jsonl with the loss on answers only,
LoRA and LIFT train the same number of parameters, SEFT after Wanda keeps the sparsity, adapters
reload to the same outputs; prompt masking, padding and the LR schedule by hand."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch

from layerwise.finetune import (
    FinetuneConfig,
    collate,
    encode_examples,
    finetune,
    format_prompt,
    generate_word_problems,
    linear_warmup_decay,
    write_jsonl,
)


@pytest.fixture(scope="module")
def tiny_run_files(tmp_path_factory):
    from layerwise.data import train_bpe_tokenizer
    from layerwise_core import tiny_llama

    root = tmp_path_factory.mktemp("finetune")
    train = generate_word_problems(48, seed=0)
    held_out = generate_word_problems(6, seed=1, exclude={p["instruction"] for p in train})
    write_jsonl(train, root / "train.jsonl")
    write_jsonl(held_out, root / "eval.jsonl")
    texts = [format_prompt(p["instruction"]) + p["answer"] for p in train + held_out]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300, min_frequency=1)
    model = tiny_llama(
        seed=0,
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=512,
    )
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root


METHOD_FIELDS = {  # tiny ranks for the tiny model; LIFT refreshes its masks every 2 steps
    "full": {},
    "lora": {"r": 2},
    "lift": {"lora_rank": 2, "filter_rank": 4, "update_interval": 2},
    "seft": {"budget_rank": 2, "update_interval": 2, "drop_fraction": 0.2},
}


def _config(root, method, **extra):
    overrides = [f"{k}={v}" for k, v in extra.items()]
    return FinetuneConfig.from_dict(
        {
            "model": {"path": str(root / "model")},
            "data": {
                "train": str(root / "train.jsonl"),
                "eval": str(root / "eval.jsonl"),
                "max_eval": 4,
            },
            "method": {"name": method, **METHOD_FIELDS.get(method, {})},
            "optimizer": {"lr": 1e-2, "betas": [0.9, 0.95], "eps": 1e-6, "weight_decay": 0.0},
            "schedule": {"warmup_ratio": 0.25},
            "prune": {"calibration_sequences": 32},
            "train": {
                "steps": 4,
                "batch_size": 4,
                "grad_accum": 2,
                "log_every": 1,
                "out_dir": str(root / f"run-{method}"),
            },
            "eval": {"max_new_tokens": 6, "batch_size": 4},
        },
        overrides=overrides,
    )


@pytest.mark.parametrize("method", ["full", "lora", "lift", "seft"])
def test_every_method_trains_and_evaluates(tiny_run_files, method):
    if method == "lora":
        pytest.importorskip("peft")
    extra = {"prune.method": "wanda"} if method == "seft" else {}
    result = finetune(_config(tiny_run_files, method, **extra))
    assert result.steps == 4 and len(result.train_losses) == 4
    assert all(torch.isfinite(torch.tensor(result.train_losses)))
    assert result.train_losses[-1] < result.train_losses[0]
    assert result.eval is not None and result.eval.total == 4
    assert (result.out_dir / "eval.json").is_file() and (result.out_dir / "metrics.jsonl").is_file()
    saved = result.out_dir / ("final" if method == "full" else "adapter")
    assert saved.is_dir()
    if method in ("lora", "lift"):
        # a LoRA of rank r and LIFT at lora_rank r train (m + n) * r entries per matrix
        n_linear_params = (
            sum(
                (m + n) * 2
                for m, n in [(32, 32), (16, 32), (16, 32), (32, 32), (64, 32), (64, 32), (32, 64)]
            )
            * 2
        )
        assert result.trainable_parameters == n_linear_params
    if method == "seft":
        for module in result.model.sparse_modules().values():
            assert (module.effective_weight() == 0).float().mean().item() >= 0.5


def test_lift_adapter_reloads_to_the_same_outputs(tiny_run_files):
    from transformers import AutoModelForCausalLM

    from sparse_ft import SparseFTModel

    out = tiny_run_files / "run-lift-reload"  # run-lift holds the run of the test above
    result = finetune(_config(tiny_run_files, "lift", **{"train.out_dir": out}))
    base = AutoModelForCausalLM.from_pretrained(tiny_run_files / "model")
    loaded = SparseFTModel.from_pretrained(base, result.out_dir / "adapter")
    ids = torch.randint(0, 300, (2, 9), generator=torch.Generator().manual_seed(0))
    assert torch.equal(loaded(input_ids=ids).logits, result.model(input_ids=ids).logits)


def test_loss_is_on_the_answer_only_and_padding_is_ignored(tiny_run_files):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_run_files / "model")
    records = [
        {"instruction": "Add 2 and 3.", "answer": "2 + 3 = 5. The answer is 5."},
        {"instruction": "What is 10 - 4?", "answer": "6"},
    ]
    encoded = encode_examples(records, tokenizer)
    for record, (ids, labels) in zip(records, encoded):
        prompt = tokenizer(format_prompt(record["instruction"]), add_special_tokens=False)[
            "input_ids"
        ]
        assert ids[: len(prompt)] == prompt and labels[: len(prompt)] == [-100] * len(prompt)
        assert labels[len(prompt) :] == ids[len(prompt) :]
        assert ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[len(prompt) : -1]) == record["answer"]
    batch = collate(encoded, pad_id=tokenizer.pad_token_id)
    short = min(len(ids) for ids, _ in encoded)
    row = 0 if len(encoded[0][0]) == short else 1
    assert (batch["labels"][row, short:] == -100).all()
    assert (batch["attention_mask"][row, short:] == 0).all()


def test_schedule_by_hand():
    # warm-up of 2 steps over 10: 1/2, 2/2, then (10 - s) / 8
    assert [linear_warmup_decay(s, 2, 10) for s in range(4)] == [0.5, 1.0, 1.0, 7 / 8]
    assert linear_warmup_decay(10, 2, 10) == 0.0


def test_word_problems_are_consistent_and_held_out_is_disjoint():
    train = generate_word_problems(200, seed=0)
    held = generate_word_problems(50, seed=1, exclude={p["instruction"] for p in train})
    assert not {p["instruction"] for p in train} & {p["instruction"] for p in held}
    for p in train + held:
        *_, (a, op, b, result) = re.findall(r"(\d+) ([-+*/]) (\d+) = (\d+)", p["answer"])
        assert eval(f"{a} {op} {b}") == int(result)
        assert p["answer"].endswith(f"The answer is {result}.")


def test_config_errors_name_the_field(tiny_run_files):
    from layerwise_core import ConfigError

    with pytest.raises(
        ConfigError, match=r"field 'method': unknown name 'dora' \(did you mean 'lora'\?\)"
    ):
        _config(tiny_run_files, "dora")
    with pytest.raises(ValueError, match="model.path"):
        finetune(FinetuneConfig.from_dict({"data": {"train": str(tiny_run_files / "train.jsonl")}}))


# ---- data.prompt_format: chat, and the evaluation options ----------------------------------------
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.fixture(scope="module")
def chat_model(tiny_run_files):
    """The tiny model folder with a chat template saved in its tokenizer."""
    from transformers import AutoTokenizer

    folder = tiny_run_files / "chat-model"
    shutil.copytree(tiny_run_files / "model", folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder


def test_chat_prompt_format_encodes_one_user_turn_and_a_tokenizer_without_one_is_refused(
    tiny_run_files, chat_model
):
    from transformers import AutoTokenizer

    from layerwise.finetune.instruction_data import prompt_text
    from layerwise_core import UsageError

    tokenizer = AutoTokenizer.from_pretrained(chat_model)  # the template came back from disk
    record = {"instruction": "Add 2 and 3.", "answer": "2 + 3 = 5"}
    expected = "<|user|>\nAdd 2 and 3.\n<|assistant|>\n"  # CHAT_TEMPLATE by hand
    assert prompt_text(tokenizer, record["instruction"], "chat") == expected
    [(ids, labels)] = encode_examples([record], tokenizer, prompt_format="chat")
    prompt = tokenizer(expected, add_special_tokens=False)["input_ids"]
    answer = tokenizer(record["answer"], add_special_tokens=False)["input_ids"]
    assert ids == prompt + answer + [tokenizer.eos_token_id]
    assert labels == [-100] * len(prompt) + answer + [tokenizer.eos_token_id]  # answer only
    plain = AutoTokenizer.from_pretrained(tiny_run_files / "model")
    with pytest.raises(UsageError, match="needs a tokenizer with a chat template"):
        encode_examples([record], plain, prompt_format="chat")
    out = tiny_run_files / "run-chat-refused"
    cfg = _config(tiny_run_files, "full", **{"data.prompt_format": "chat", "train.out_dir": out})
    with pytest.raises(UsageError, match="set data.prompt_format=alpaca"):
        finetune(cfg)
    assert not (out / "config.yaml").exists()  # refused before anything is written


def test_chat_run_trains_and_evaluates_on_one_prompt_with_the_eval_options(
    tiny_run_files, chat_model, monkeypatch
):
    """data.prompt_format=chat: the training examples' prompts (the -100 labels) and the
    evaluation's prompts are the chat template's; eval.* reach evaluate_math_generation and
    eval.json holds its summary() (per level, pass@k) and the records."""
    from transformers import AutoTokenizer

    from layerwise.finetune import pipeline
    from layerwise.finetune.instruction_data import prompt_text

    problems = [
        {**p, "difficulty": 1 + i % 2} for i, p in enumerate(generate_word_problems(4, seed=2))
    ]
    write_jsonl(problems, tiny_run_files / "eval-levels.jsonl")
    trained, evaluated = [], {}
    real_encode, real_eval = pipeline.encode_examples, pipeline.evaluate_math_generation

    def encode(*args, **kwargs):
        out = real_encode(*args, **kwargs)
        trained.extend(ids[: labels.count(-100)] for ids, labels in out)
        return out

    def evaluate(*args, **kwargs):
        result = real_eval(*args, **kwargs)
        evaluated.update(kwargs, result=result)
        return result

    monkeypatch.setattr(pipeline, "encode_examples", encode)
    monkeypatch.setattr(pipeline, "evaluate_math_generation", evaluate)
    options = {
        "extract": "marker",
        "samples": 3,
        "pass_k": [1, 3],
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 5,
        "seed": 3,
        "level_field": "difficulty",
    }
    cfg = _config(
        tiny_run_files,
        "full",
        **{
            "model.path": chat_model,
            "data.prompt_format": "chat",
            "data.eval": tiny_run_files / "eval-levels.jsonl",
            "train.out_dir": tiny_run_files / "run-chat",
            **{f"eval.{k}": v for k, v in options.items()},
        },
    )
    result = finetune(cfg)
    tokenizer = AutoTokenizer.from_pretrained(chat_model)
    train = [json.loads(line) for line in (tiny_run_files / "train.jsonl").read_text().splitlines()]
    assert [tokenizer.decode(ids) for ids in trained] == [
        prompt_text(tokenizer, r["instruction"], "chat") for r in train
    ]
    assert {k: evaluated[k] for k in options} == {**options, "pass_k": (1, 3)}
    report = json.loads((result.out_dir / "eval.json").read_text())
    assert [r["prompt"] for r in report["records"]] == [
        prompt_text(tokenizer, p["instruction"], "chat") for p in problems[:4]
    ]
    assert all(len(r["samples"]) == 3 for r in report["records"])
    summary = json.loads(json.dumps(evaluated["result"].summary()))  # JSON keys are strings
    assert {k: v for k, v in report.items() if k != "records"} == summary
    assert set(report["pass_at"]) == {"1", "3"} and set(report["per_level"]) == {"1", "2"}
    logged = [
        json.loads(line) for line in (result.out_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert logged[-1]["pass@3"] == report["pass_at"]["3"]


def test_eval_options_are_checked_and_resume_safe(tiny_run_files):
    from layerwise.finetune.pipeline import config_changes
    from layerwise_core import ConfigError

    with pytest.raises(ConfigError, match="eval.pass_k needs eval.samples"):
        _config(tiny_run_files, "full", **{"eval.pass_k": "[2]"})
    with pytest.raises(ConfigError, match=r"1..eval.samples=2"):
        _config(tiny_run_files, "full", **{"eval.samples": 2, "eval.pass_k": "[4]"})
    base = _config(tiny_run_files, "full")
    changed = _config(
        tiny_run_files,
        "full",
        **{"eval.samples": 4, "eval.extract": "marker", "data.prompt_format": "chat"},
    )
    # the evaluation after training may change on a resume; the training prompt may not
    assert config_changes(base.to_dict(), changed.to_dict()) == {
        "data.prompt_format": ["alpaca", "chat"]
    }

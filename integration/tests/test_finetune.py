"""`layerwise.finetune`: every method trains on instruction jsonl with the loss on answers only,
LoRA and LIFT train the same number of parameters, SEFT after Wanda keeps the sparsity, adapters
reload to the same outputs; prompt masking, padding and the LR schedule by hand."""

from __future__ import annotations

import re

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

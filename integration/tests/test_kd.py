"""`layerwise.finetune.kd`: the KD losses against the spec's hand-computed 3-token case (T4) and
TRL's `GKDTrainer.generalized_jsd_loss`; the GKD on/off-policy switch by counting generate calls
(T9); sequence-level KD's rejection sampling and its resumable cache; 50 steps of logit KD on a
tiny random Llama lower the forward KL to the teacher by >= 30% (T10)."""

from __future__ import annotations

import json
import math
import re
import warnings

import pytest
import torch
from pydantic import ValidationError

from layerwise.finetune import format_prompt, generate_word_problems
from layerwise.finetune.instruction_data import IGNORE_INDEX, collate, encode_examples
from layerwise.finetune.kd import (
    TRACES_FILE,
    TRACES_META,
    KDConfig,
    forward_kl,
    generalized_jsd,
    reverse_kl,
)
from layerwise.finetune.objectives import Objective, ObjectiveContext
from layerwise_core import UsageError

P_T = [0.7, 0.2, 0.1]
P_S = [0.5, 0.3, 0.2]
MAX_LENGTH = 256  # prompt + answer tokens (the longest record here has 197)
FORWARD, REVERSE, JSD_HALF = 0.0851228, 0.0920329, 0.0219012  # spec section 6 T4, by hand


def _logits(p):  # log-probabilities fed as logits: softmax gives p back
    return torch.tensor(p, dtype=torch.float64).log().view(1, 1, 3)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls: one thread is fastest, and far faster on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- T4: the losses ---------------------------------------------------------------------------
def test_kl_directions_match_the_hand_computed_values():
    s, t = _logits(P_S), _logits(P_T)
    assert forward_kl(s, t).item() == pytest.approx(FORWARD, abs=1e-7)
    assert reverse_kl(s, t).item() == pytest.approx(REVERSE, abs=1e-7)
    assert generalized_jsd(s, t, beta=0.5).item() == pytest.approx(JSD_HALF, abs=1e-7)
    # the direction matters: swapping the arguments swaps the two KLs
    assert forward_kl(t, s).item() == pytest.approx(REVERSE, abs=1e-7)
    # beta 0 / 1 are exactly the KLs (TRL's special cases), not the mixture's limit
    assert torch.equal(generalized_jsd(s, t, beta=0.0), forward_kl(s, t))
    assert torch.equal(generalized_jsd(s, t, beta=1.0), reverse_kl(s, t))


def test_masked_positions_contribute_nothing():
    s, t = _logits(P_S), _logits(P_T)
    junk_s = torch.randn(1, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    junk_t = torch.randn(1, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    student = torch.cat([junk_s[:, :1], s, junk_s[:, 1:]], 1).requires_grad_(True)
    teacher = torch.cat([junk_t[:, :1], t, junk_t[:, 1:]], 1)
    labels = torch.tensor([[IGNORE_INDEX, 2, IGNORE_INDEX]])
    for beta, expected in ((0.0, FORWARD), (0.5, JSD_HALF), (1.0, REVERSE)):
        loss = generalized_jsd(student, teacher, labels, beta)
        assert loss.item() == pytest.approx(expected, abs=1e-7)
        (grad,) = torch.autograd.grad(loss, student)
        assert torch.all(grad[:, [0, 2]] == 0) and grad[:, 1].abs().sum() > 0
    # mean over valid tokens: two identical valid positions give the single-token value
    labels = torch.tensor([[IGNORE_INDEX, 2, 0]])
    both_s, both_t = torch.cat([junk_s[:, :1], s, s], 1), torch.cat([junk_t[:, :1], t, t], 1)
    assert generalized_jsd(both_s, both_t, labels, 0.0).item() == pytest.approx(FORWARD, abs=1e-7)
    # nothing valid: zero, not NaN
    none = torch.full((1, 3), IGNORE_INDEX)
    assert generalized_jsd(student, teacher, none, 0.5).item() == 0.0


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_generalized_jsd_equals_trl(beta):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gkd = pytest.importorskip("trl.experimental.gkd")
    trl_loss = gkd.GKDTrainer.generalized_jsd_loss
    s, t = _logits(P_S).float(), _logits(P_T).float()
    assert generalized_jsd(s, t, beta=beta).item() == pytest.approx(
        trl_loss(s, t, beta=beta).item(), abs=1e-6
    )
    g = torch.Generator().manual_seed(3)  # a batch with masked positions and a wider vocabulary
    s, t = torch.randn(3, 5, 11, generator=g) * 2, torch.randn(3, 5, 11, generator=g) * 2
    labels = torch.randint(0, 11, (3, 5), generator=g)
    labels[0, :2] = labels[2, 4] = IGNORE_INDEX
    ours = generalized_jsd(s, t, labels, beta)
    theirs = trl_loss(s, t, labels, beta=beta)
    assert ours.item() == pytest.approx(theirs.item(), abs=1e-6)


def test_config_defaults_are_trls_and_teacher_is_required():
    cfg = KDConfig(teacher="some/folder")
    ours = {k: getattr(cfg, k) for k in ("temperature", "lmbda", "beta", "max_new_tokens")}
    assert ours == {"temperature": 0.9, "lmbda": 0.5, "beta": 0.5, "max_new_tokens": 128}
    assert cfg.seq_kd is False and cfg.alpha == 0.0 and cfg.mode == "logit"
    assert (cfg.seq_samples, cfg.seq_temperature) == (4, 0.7)
    try:
        import dataclasses

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from trl.experimental.gkd import GKDConfig
    except ImportError:
        pass
    else:  # drift in TRL's defaults fails here
        trl = {f.name: f.default for f in dataclasses.fields(GKDConfig)}
        assert ours == {k: trl[k] for k in ours} and trl["seq_kd"] is False
    with pytest.raises(ValidationError, match="teacher"):
        KDConfig()
    with pytest.raises(ValidationError, match="lmbda"):
        KDConfig(teacher="t", lmbda=1.5)
    assert isinstance(cfg.build(), Objective)


# ---- a tiny student / teacher pair --------------------------------------------------------------
@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    from layerwise.data import train_bpe_tokenizer
    from layerwise_core import tiny_llama

    root = tmp_path_factory.mktemp("kd")
    records = generate_word_problems(24, seed=0)
    texts = [format_prompt(r["instruction"]) + r["answer"] for r in records]
    tokenizer = train_bpe_tokenizer(texts, vocab_size=300, min_frequency=1)
    fields = {
        "vocab_size": len(tokenizer),
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "max_position_embeddings": 512,
    }
    teacher = tiny_llama(seed=1, **fields)
    teacher.save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    return {"root": root, "records": records, "tokenizer": tokenizer, "fields": fields}


def _student(pair, seed=0):
    from layerwise_core import tiny_llama

    return tiny_llama(seed=seed, **pair["fields"])


def _setup(
    pair,
    model,
    out_dir,
    prompt_format="alpaca",
    max_length=MAX_LENGTH,
    instruction_field="instruction",
    answer_field="answer",
    **fields,
):
    objective = KDConfig(teacher=str(pair["root"] / "teacher"), **fields).build()
    out_dir.mkdir(parents=True, exist_ok=True)
    objective.setup(
        ObjectiveContext(
            model=model,
            base_model=model,
            tokenizer=pair["tokenizer"],
            device=torch.device("cpu"),
            seed=0,
            out_dir=out_dir,
            records=pair["records"],
            instruction_field=instruction_field,
            answer_field=answer_field,
            max_length=max_length,
            total_steps=50,
            prompt_format=prompt_format,
        )
    )
    return objective


def _batch(pair, records):
    examples = encode_examples(records, pair["tokenizer"], max_length=MAX_LENGTH)
    return collate(examples, pair["tokenizer"].pad_token_id)


class _CountGenerate:
    """Wraps `model.generate`: counts calls and keeps the prompts (left padding removed)."""

    def __init__(self, model):
        self.calls, self.prompts, self._generate = 0, [], model.generate
        model.generate = self

    def __call__(self, *, input_ids, attention_mask, **kwargs):
        self.calls += 1
        self.prompts.append([row[m.bool()].tolist() for row, m in zip(input_ids, attention_mask)])
        return self._generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)


# ---- T9: the GKD switch -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("lmbda", "seq_kd", "by_student", "by_teacher"),
    [(0.0, False, 0, 0), (1.0, False, 2, 0), (0.0, True, 0, 2)],
)
def test_gkd_switch_counts_generate_calls(pair, tmp_path, lmbda, seq_kd, by_student, by_teacher):
    student = _student(pair)
    objective = _setup(
        pair, student, tmp_path, mode="gkd", lmbda=lmbda, seq_kd=seq_kd, max_new_tokens=5
    )
    student_calls, teacher_calls = _CountGenerate(student), _CountGenerate(objective.teacher)
    records = pair["records"][:3]
    gold = _batch(pair, records)
    assert (gold["labels"] != IGNORE_INDEX).sum(1).min() > 5  # every answer fits max_length
    prompts = [
        ids[: labels.count(IGNORE_INDEX)]
        for ids, labels in encode_examples(records, pair["tokenizer"], max_length=MAX_LENGTH)
    ]
    for step in range(2):
        loss, metrics = objective.loss(student, records, dict(gold), step, 0)
        loss.backward()
        assert math.isfinite(loss.item()) and loss.item() > 0
        assert metrics["on_policy"] == float(lmbda == 1.0)
        assert metrics["teacher_sampled"] == float(seq_kd)
        if by_student or by_teacher:  # the sample is scored: at most 5 tokens per completion
            assert metrics["completion_tokens"] <= 5 * len(records)
        else:  # the dataset's completions are scored
            assert metrics["completion_tokens"] == float((gold["labels"][:, 1:] != -100).sum())
    assert (student_calls.calls, teacher_calls.calls) == (by_student, by_teacher)
    for call in student_calls.prompts + teacher_calls.prompts:
        assert call == prompts  # generation starts from the prompt alone


def test_gkd_draws_depend_on_seed_step_micro_only(pair, tmp_path):
    """A resumed stage sees the same coin flips and samples: the loss of (step, micro) does not
    depend on what ran before, nor on the global RNG."""
    student = _student(pair)
    objective = _setup(pair, student, tmp_path, mode="gkd", lmbda=0.5, max_new_tokens=3)
    records = pair["records"][4:6]
    batch = _batch(pair, records)
    flips = [objective.loss(student, records, dict(batch), s, 0)[1]["on_policy"] for s in range(6)]
    assert 0 < sum(flips) < 6  # lmbda 0.5 mixes both branches over 6 steps
    torch.manual_seed(123)
    again = [objective.loss(student, records, dict(batch), s, 0)[1]["on_policy"] for s in range(6)]
    assert again == flips
    first = objective.loss(student, records, dict(batch), 5, 1)[0]
    torch.rand(10)  # disturb the global RNG
    assert torch.equal(objective.loss(student, records, dict(batch), 5, 1)[0], first)


# ---- mode seq -----------------------------------------------------------------------------------
def test_seq_kd_keeps_correct_traces_caches_them_and_trains_on_them(pair, tmp_path, monkeypatch):
    """The teacher's generate is replaced by one that writes `#### <gold>` for even rows and
    `#### 100000` for odd ones (one sample per problem): exactly the correct traces are kept, the second setup reuses the
    cache without sampling, and the SFT labels are the trace's tokens."""
    tok = pair["tokenizer"]
    records = pair["records"][:6]
    golds = {
        format_prompt(r["instruction"]): r["answer"].rsplit(" ", 1)[1].rstrip(".") for r in records
    }
    from transformers import LlamaForCausalLM

    calls = []

    def fake_generate(self, *, input_ids, attention_mask, **kwargs):
        calls.append(kwargs["temperature"])
        rows = []
        for i, (row, m) in enumerate(zip(input_ids, attention_mask)):
            prompt = tok.decode(row[m.bool()], skip_special_tokens=True)
            answer = golds[prompt] if i % 2 == 0 else "100000"
            rows.append(tok(f"so #### {answer}", add_special_tokens=False)["input_ids"])
        width = max(map(len, rows))
        tail = torch.full((len(rows), width), tok.pad_token_id)
        for i, r in enumerate(rows):
            tail[i, : len(r)] = torch.tensor(r)
        return torch.cat([input_ids, tail], 1)

    monkeypatch.setattr(LlamaForCausalLM, "generate", fake_generate)
    student = _student(pair)
    pair_six = {**pair, "records": records}
    objective = _setup(pair_six, student, tmp_path, mode="seq", seq_samples=1)
    assert calls and set(calls) == {0.7}  # seq_temperature
    rows = [json.loads(line) for line in (tmp_path / TRACES_FILE).read_text().splitlines()]
    # jobs are (problem, sample) in order, 16 per generate call: even rows within a chunk
    kept = {(r["problem"], r["sample"]) for r in rows}
    jobs = [(i, 0) for i in range(6)]
    expected = {job for n, job in enumerate(jobs) if (n % 16) % 2 == 0}
    assert kept == expected
    assert all(r["answer"].endswith(golds[format_prompt(r["instruction"])]) for r in rows)

    calls.clear()
    again = _setup(pair_six, _student(pair), tmp_path, mode="seq", seq_samples=1)
    assert calls == [] and again.traces == objective.traces  # resumed from the cache
    with pytest.raises(Exception, match="delete"):
        _setup(pair_six, _student(pair), tmp_path, mode="seq", seq_samples=2)
    # the same number of problems but other ones, another max_length or other fields: the
    # cache is refused with the files to delete (it only counted the problems before)
    files = f"delete {tmp_path / TRACES_FILE} and {tmp_path / TRACES_META}"
    edited = [dict(r) for r in records]
    edited[3]["answer"] = "A different solution. The answer is 7."
    assert edited[3]["answer"] != records[3]["answer"]
    swapped = [records[1], records[0], *records[2:]]
    renamed = [{"question": r["instruction"], "solution": r["answer"]} for r in records]
    for other, overrides, key in [
        (edited, {}, "problems_sha256"),
        (swapped, {}, "problems_sha256"),
        (records, {"max_length": MAX_LENGTH - 1}, "max_length"),
        (renamed, {"instruction_field": "question", "answer_field": "solution"}, "answer_field"),
    ]:
        with pytest.raises(UsageError, match=re.escape(files)) as refused:
            _setup({**pair, "records": other}, _student(pair), tmp_path, mode="seq",
                   seq_samples=1, **overrides)  # fmt: skip
        assert key in str(refused.value)
    assert calls == []  # nothing was sampled again

    loss, metrics = objective.loss(student, records, _batch(pair, records), 0, 0)
    solved = sorted({i for i, _ in kept})
    assert metrics["kept_problems"] == len(solved) < len(records)
    # every kept trace of a problem is the same text here, so the expected loss is the CE on
    # the solved problems with that trace as the answer (a problem without one is left out)
    traced = [
        {**records[i], "answer": objective.traces[records[i]["instruction"]][0]} for i in solved
    ]
    assert all(t["answer"] == f"so #### {golds[format_prompt(t['instruction'])]}" for t in traced)
    expected = student(**_batch(pair, traced)).loss
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_seq_kd_with_a_chat_template_prompts_the_teacher_and_trains_with_it(
    pair, tmp_path, monkeypatch
):
    """prompt_format chat: the teacher is prompted with the chat template's text (one user turn
    + generation prompt), the cache records the format, and the SFT loss is on chat examples."""
    import copy

    from transformers import LlamaForCausalLM

    from layerwise.finetune.instruction_data import prompt_text

    tok = copy.deepcopy(pair["tokenizer"])
    tok.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    records = pair["records"][:3]
    by_prompt = {f"<|user|>\n{r['instruction']}\n<|assistant|>\n": r for r in records}
    seen = []

    def fake_generate(self, *, input_ids, attention_mask, **kwargs):
        rows = []
        for row, m in zip(input_ids, attention_mask):
            prompt = tok.decode(row[m.bool()], skip_special_tokens=True)
            seen.append(prompt)
            gold = by_prompt[prompt]["answer"].rsplit(" ", 1)[1].rstrip(".")
            rows.append(tok(f"so #### {gold}", add_special_tokens=False)["input_ids"])
        tail = torch.full((len(rows), max(map(len, rows))), tok.pad_token_id)
        for i, r in enumerate(rows):
            tail[i, : len(r)] = torch.tensor(r)
        return torch.cat([input_ids, tail], 1)

    monkeypatch.setattr(LlamaForCausalLM, "generate", fake_generate)
    student = _student(pair)
    chat_pair = {**pair, "records": records, "tokenizer": tok}
    objective = _setup(chat_pair, student, tmp_path, "chat", mode="seq", seq_samples=1)
    assert seen == list(by_prompt)  # every problem, prompted in the chat template
    assert json.loads((tmp_path / TRACES_META).read_text())["prompt_format"] == "chat"
    loss, metrics = objective.loss(student, records, {}, 0, 0)
    assert metrics["kept_problems"] == 3
    traced = [{**r, "answer": objective.traces[r["instruction"]][0]} for r in records]
    examples = encode_examples(traced, tok, max_length=MAX_LENGTH, prompt_format="chat")
    assert tok.decode(examples[0][0][: examples[0][1].count(IGNORE_INDEX)]) == prompt_text(
        tok, records[0]["instruction"], "chat"
    )
    expected = student(**collate(examples, tok.pad_token_id)).loss
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


# ---- T10: logit KD trains the student towards the teacher --------------------------------------
def test_fifty_steps_of_logit_kd_lower_forward_kl_by_30_percent(pair, tmp_path):
    torch.manual_seed(0)
    student = _student(pair, seed=0)
    objective = _setup(pair, student, tmp_path, mode="logit", beta=0.0)
    records = pair["records"]
    held_out = _batch(
        pair, generate_word_problems(4, seed=1, exclude={r["instruction"] for r in records})
    )  # problems it never trains on

    def distance() -> float:
        with torch.no_grad():
            s = student(input_ids=held_out["input_ids"], attention_mask=held_out["attention_mask"])
            t = objective.teacher(
                input_ids=held_out["input_ids"], attention_mask=held_out["attention_mask"]
            )
        return forward_kl(s.logits[:, :-1], t.logits[:, :-1], held_out["labels"][:, 1:]).item()

    before = distance()
    optimizer = torch.optim.AdamW(student.parameters(), lr=3e-3)
    for step in range(50):
        chosen = [records[(2 * step + i) % len(records)] for i in range(2)]
        loss, metrics = objective.loss(student, chosen, _batch(pair, chosen), step, 0)
        assert metrics["on_policy"] == 0.0
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = distance()
    print(f"forward KL to the teacher: {before:.4f} -> {after:.4f}")
    assert after <= 0.7 * before, (before, after)


# ---- through the fine-tuning loop: a resumed GKD run equals an uninterrupted one ---------------
def test_gkd_run_stopped_and_resumed_equals_uninterrupted(pair, tmp_path):
    """lmbda 0.5 with seq_kd: student samples, teacher samples and the coin flips all come from
    (seed, step, micro) generators, so the resumed run's losses are the same floats."""
    from layerwise.finetune import FinetuneConfig, finetune, write_jsonl

    root = pair["root"]
    write_jsonl(pair["records"], root / "train.jsonl")

    def config(out: str) -> FinetuneConfig:
        return FinetuneConfig.from_dict(
            {
                "model": {"path": str(root / "student")},
                "data": {"train": str(root / "train.jsonl"), "max_length": MAX_LENGTH},
                "method": "full",
                "objective": {
                    "name": "kd",
                    "mode": "gkd",
                    "teacher": str(root / "teacher"),
                    "lmbda": 0.5,
                    "seq_kd": True,
                    "max_new_tokens": 3,
                },
                "optimizer": {"lr": 1e-2},
                "train": {
                    "steps": 4,
                    "batch_size": 2,
                    "log_every": 1,
                    "save_every": 2,
                    "out_dir": str(tmp_path / out),
                },
            }
        )

    student = _student(pair)
    student.save_pretrained(root / "student")
    pair["tokenizer"].save_pretrained(root / "student")
    whole = finetune(config("whole"))
    branches = [
        json.loads(line)
        for line in (whole.out_dir / "metrics.jsonl").read_text().splitlines()
        if json.loads(line).get("split") == "train"
    ]
    assert {row["on_policy"] for row in branches} == {0.0, 1.0}  # both branches were taken
    finetune(config("part"), stop_at=2)
    resumed = finetune(config("part").with_overrides(["train.resume=true"]))
    assert resumed.train_losses == whole.train_losses

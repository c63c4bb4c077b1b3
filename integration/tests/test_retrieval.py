"""Key-value retrieval: properties of the generated documents, the scorer on constructed answers,
and the scorer's verdict against `generate` on a real Llama that memorised one document."""

from __future__ import annotations

import importlib
import json
import pydoc

import pytest
import torch
from torch import nn

from layerwise.eval.retrieval import KeyValueRetrieval, evaluate_retrieval, greedy_exact_match

# real English prose shipped with Python (no download): standard-library module documentation
_DOCS = ("random", "string", "json", "argparse", "collections", "itertools", "functools", "typing")


@pytest.fixture(scope="module")
def prose() -> list[str]:
    return [pydoc.getdoc(importlib.import_module(name)) for name in _DOCS]


@pytest.fixture(scope="module")
def tokenizer(prose):
    from layerwise.data.tokenizer import train_bpe_tokenizer

    return train_bpe_tokenizer(prose, vocab_size=400)


@pytest.fixture(scope="module")
def task(tokenizer, prose):
    return KeyValueRetrieval(tokenizer, prose, num_pairs=3)


def find(haystack: list[int], needle: list[int]) -> list[int]:
    n = len(needle)
    return [i for i in range(len(haystack) - n + 1) if haystack[i : i + n] == needle]


def test_documents_hold_the_facts_at_the_requested_depth(task, tokenizer):
    examples = task.examples(context_lengths=(96, 200), depths=(0.0, 0.3, 1.0), per_cell=6)
    assert len(examples) == 2 * 3 * 6
    for e in examples:
        assert len(e.prompt_ids) == e.context_length
        fact_ids = ids(tokenizer, fact_text(e.key, e.value))
        assert e.prompt_ids[e.fact_offset : e.fact_offset + len(fact_ids)] == fact_ids
        assert find(e.prompt_ids, fact_ids) == [e.fact_offset]  # the queried fact, once
        text = tokenizer.decode(e.prompt_ids)
        assert text.endswith(f"\nThe pass code of {e.key} is")
        assert text.count(f"pass code of {e.key} is {e.value}.") == 1
        assert tokenizer.decode(e.answer_ids) == f" {e.value}"
        assert len(e.value) == 3 and e.value[0] != "0"
        assert len(e.distractors) == 2 and e.key not in {k for k, _ in e.distractors}
        for key, value in e.distractors:  # the other facts are there, with their own values
            assert text.count(f"pass code of {key} is {value}.") == 1
        # depth = the share of the filler text that precedes the queried fact
        spans = [(find(e.prompt_ids, ids(tokenizer, fact_text(k, v)))[0], len(ids(tokenizer, fact_text(k, v))))
                 for k, v in e.distractors]  # fmt: skip
        query_len = len(ids(tokenizer, f"\nThe pass code of {e.key} is"))
        filler = e.context_length - len(fact_ids) - sum(n for _, n in spans) - query_len
        filler_before = e.fact_offset - sum(n for start, n in spans if start < e.fact_offset)
        assert filler_before == round(e.depth * filler)


def fact_text(key: str, value: str) -> str:
    return f"\nThe pass code of {key} is {value}.\n"


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_depth_extremes_sit_at_the_ends(tokenizer, prose):
    task = KeyValueRetrieval(tokenizer, prose, num_pairs=4)
    for e in task.examples(context_lengths=(150,), depths=(0.0, 1.0), per_cell=10):
        query_len = len(ids(tokenizer, f"\nThe pass code of {e.key} is"))
        fact_len = len(ids(tokenizer, fact_text(e.key, e.value)))
        if e.depth == 0.0:
            assert e.fact_offset == 0
        else:
            assert e.fact_offset + fact_len == e.context_length - query_len


def test_same_seed_same_documents_other_seed_other_facts(tokenizer, prose):
    a = KeyValueRetrieval(tokenizer, prose).examples((80,), (0.5,), per_cell=5, seed=0)
    b = KeyValueRetrieval(tokenizer, prose).examples((80,), (0.5,), per_cell=5, seed=0)
    c = KeyValueRetrieval(tokenizer, prose).examples((80,), (0.5,), per_cell=5, seed=1)
    assert a == b
    assert [(e.key, e.value) for e in a] != [(e.key, e.value) for e in c]
    assert len({(e.key, e.value) for e in a}) == 5


def test_training_documents_end_with_the_answer(task, tokenizer):
    docs = task.documents(20, context_lengths=(100, 128), seed=3)
    for doc in docs:
        text = tokenizer.decode(doc)
        query = text.rsplit("\nThe pass code of ", 1)[1]
        key, value = query.split(" is ")
        assert f"pass code of {key} is {value}." in text
        assert len(doc) - len(ids(tokenizer, f" {value}")) in (100, 128)


def test_too_short_context_names_the_fix(task):
    with pytest.raises(ValueError, match="raise it or lower num_pairs"):
        task.examples(context_lengths=(20,), depths=(0.5,), per_cell=1)


class ScriptedLM(nn.Module):
    """Logits 8 * one_hot(script[t]) for the script registered for the row's tokens."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.scripts: dict[tuple[int, ...], torch.Tensor] = {}
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, input_ids, attention_mask):
        rows = []
        for row, mask in zip(input_ids, attention_mask):
            script = self.scripts[tuple(row[mask.bool()].tolist())]
            rows.append(nn.functional.pad(script, (0, input_ids.shape[1] - len(script))))
        logits = 8.0 * nn.functional.one_hot(torch.stack(rows), self.vocab).float()
        return type("Out", (), {"logits": logits + self.anchor})


def test_scorer_exact_match_on_constructed_answers(task, tokenizer):
    examples = task.examples(context_lengths=(90, 120), depths=(0.0, 1.0), per_cell=3)
    vocab = len(tokenizer)
    model = ScriptedLM(vocab)
    for b, e in enumerate(examples):
        p, a = len(e.prompt_ids), len(e.answer_ids)
        script = torch.zeros(p + a, dtype=torch.long)
        script[p - 1 : p - 1 + a] = torch.tensor(e.answer_ids)
        if b % 3 == 1:  # wrong last answer token
            script[p - 2 + a] = (e.answer_ids[-1] + 1) % vocab
        if b % 3 == 2:  # right answer one position late: an off-by-one scorer would accept it
            script = torch.cat([script, torch.zeros(1, dtype=torch.long)])
            script[p - 1] = (e.answer_ids[0] + 1) % vocab
            script[p : p + a] = torch.tensor(e.answer_ids)
            script = script[: p + a]
        model.scripts[tuple(e.prompt_ids + e.answer_ids)] = script
    expected = [b % 3 == 0 for b in range(len(examples))]
    for batch_size in (1, 5, len(examples)):
        matches, nlls = greedy_exact_match(model, examples, batch_size=batch_size)
        assert matches == expected
    # NLL of a right token under 8*one_hot logits: log(1 + (V - 1) e^-8), per answer token
    right = torch.log1p(torch.tensor((vocab - 1) * torch.exp(torch.tensor(-8.0)).item())).item()
    assert nlls[0] == pytest.approx(right * len(examples[0].answer_ids), rel=1e-4)
    report = evaluate_retrieval(model, examples, batch_size=5)
    assert report.accuracy == pytest.approx(sum(expected) / len(expected))
    assert set(report.cells) == {(90, 0.0), (90, 1.0), (120, 0.0), (120, 1.0)}
    for (context, depth), cell in report.cells.items():
        idx = [b for b, e in enumerate(examples) if (e.context_length, e.depth) == (context, depth)]
        assert cell.count == 3 and cell.accuracy == sum(expected[b] for b in idx) / 3
    assert "| 90 |" in report.table()


def test_scorer_agrees_with_generate_on_a_llama_that_memorised_a_document(tokenizer, prose):
    from layerwise_core import tiny_llama

    task = KeyValueRetrieval(tokenizer, prose)  # one fact per document
    torch.manual_seed(0)
    model = tiny_llama(seed=0, vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128)
    remembered, other = task.examples(context_lengths=(48,), depths=(0.5,), per_cell=2, seed=5)
    doc = torch.tensor([remembered.prompt_ids + remembered.answer_ids])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is fastest on a busy machine
    try:
        for _ in range(60):
            optimizer.zero_grad()
            model(doc, labels=doc).loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    matches, _ = greedy_exact_match(model, [remembered, other])
    for example, match in zip([remembered, other], matches):
        prompt = torch.tensor([example.prompt_ids])
        out = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
            max_new_tokens=len(example.answer_ids), pad_token_id=0,
        )  # fmt: skip
        generated = out[0, prompt.shape[1] :].tolist()
        assert match == (generated == example.answer_ids)
    assert matches[0]  # it learned its one document


def test_evaluate_pretrained_reads_a_saved_model_and_local_text(tmp_path, tokenizer, prose):
    from layerwise.eval.retrieval import evaluate_pretrained
    from layerwise_core import tiny_llama

    model = tiny_llama(seed=0, vocab_size=len(tokenizer), max_position_embeddings=256)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "text").mkdir()
    for i, doc in enumerate(prose):  # one file per document, so the split has both sides
        (tmp_path / "text" / f"{i}.txt").write_text(doc)
    report = evaluate_pretrained(
        str(tmp_path / "model"), source=f"text:{tmp_path / 'text'}", context_lengths=(64,),
        depths=(0.0, 1.0), per_cell=3, device="cpu",
    )  # fmt: skip
    assert set(report.cells) == {(64, 0.0), (64, 1.0)}
    assert all(cell.count == 3 for cell in report.cells.values())
    assert report.answer_nll > 0
    record = json.loads(json.dumps(report.as_dict()))
    assert [(c["context_length"], c["depth"], c["count"]) for c in record["cells"]] == [
        (64, 0.0, 3),
        (64, 1.0, 3),
    ]

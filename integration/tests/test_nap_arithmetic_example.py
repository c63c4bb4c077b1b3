"""examples/nap_arithmetic.py: the two arms hold the same content on a canvas of one length, the
NAP tags are single tokens, the decoding segments are the trajectory blocks, and (slow) the whole
script runs with the NFE parallel-forced decoding must take."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "nap_arithmetic.py"
PAIRS = [(47, 85), (3, 3), (0, 5), (49, 9), (99, 99)]


@pytest.fixture(scope="module")
def nap():
    spec = importlib.util.spec_from_file_location("nap_arithmetic", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tags_are_single_tokens_and_text_round_trips(nap):
    vocab = nap.Vocabulary(2)
    text = "<think 1>7+5=12, 40+80=120</think 1>\n<summary>47+85=132</summary>$"
    ids = vocab.encode(text)
    assert vocab.decode(ids) == text
    assert ids[0] == vocab.index["<think 1>"] and ids[-2] == vocab.index["</summary>"]
    # four tags of 9, 10, 9, 10 characters, one token each
    assert len(ids) == len(text) - 8 - 9 - 8 - 9
    assert vocab.mask == vocab.size - 1 and vocab.mask not in ids


@pytest.mark.parametrize("m", [1, 2, 3])
def test_same_content_same_canvas_segments_on_the_blocks(nap, m):
    vocab = nap.Vocabulary(m)
    rows = {layout: nap.targets(PAIRS, m, 7, layout, vocab) for layout in ("nap", "long_cot")}
    length = nap.gen_length(m)
    assert sum(nap.nap_segments(m)) == length
    for layout, batch in rows.items():
        assert batch.shape == (len(PAIRS), nap.PROMPT_LEN + length), layout
    drop = {vocab.index[s] for s in (*vocab.tags, nap.FILLER, nap.SEPARATOR, nap.EOS)}
    for r, (a, b) in enumerate(PAIRS):
        texts = {k: vocab.decode(v[r, nap.PROMPT_LEN :].tolist()) for k, v in rows.items()}
        # same trajectories (the same seed draws them) and summary: equal once structure is gone
        content = {k: [i for i in v[r].tolist() if i not in drop] for k, v in rows.items()}
        assert content["nap"] == content["long_cot"]
        want = f"{a:02d}+{b:02d}={a + b:03d}"
        assert nap.summary_of(texts["nap"], "nap") == want
        assert nap.summary_of(texts["long_cot"], "long_cot") == want
        # segment j of the NAP canvas is exactly think block j and its separator, then the summary
        start = 0
        for j, size in enumerate(nap.nap_segments(m), start=1):
            piece = vocab.decode(
                rows["nap"][r, nap.PROMPT_LEN + start : nap.PROMPT_LEN + start + size].tolist()
            )
            head = "<summary>" if j == m + 1 else f"<think {j}>"
            assert piece.startswith(head), (j, piece)
            start += size


def test_pairs_short_of_derivations_are_left_out(nap):
    # 0 + 0: both digit orders write the same text, and a + b = b + a merges the last two
    assert [nap.usable(0, 0, m) for m in (1, 2, 3)] == [True, True, False]
    assert [nap.usable(7, 7, m) for m in (3, 4)] == [True, False]
    assert (0, 0) not in nap.split(2500, 0, 50, 3)
    assert all(a != b for a, b in nap.split(2000, 0, 50, 4))


@pytest.mark.slow
def test_nap_arithmetic_smoke(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "results.json").read_text())
    length = out["gen_length"]
    assert length == 2 * (29 + 2 + 1) + 11  # two trajectories of width 29, tags, separators
    summary = out["summary"]
    assert set(summary) == {"nap, trajectory segments", "nap, 1 segment", "long_cot, 1 segment"}
    for arms in summary.values():
        for k in (1, 2, 4, 8):  # k positions per step, no constraint: ceil(G / k) forwards
            assert arms[str(k)]["nfe"] == math.ceil(length / k)
            assert 0.0 <= arms[str(k)]["mean"] <= 1.0

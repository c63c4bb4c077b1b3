"""Long steps show progress on a terminal, never in logs or pipes, and never when quiet."""

from __future__ import annotations

import hashlib
import io
import os
import pty
import subprocess
import sys

import pytest
import torch

from layerwise._progress import is_silenced, progress_bar, silenced, stage


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _as_terminal(monkeypatch) -> _Terminal:
    """Replace stderr by a buffer that says it is a terminal (in the test body: pytest's capture
    sets sys.stderr again between the setup and call phases)."""
    stream = _Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    return stream


@pytest.mark.parametrize("where", ["terminal", "pipe", "quiet", "silenced"])
def test_a_bar_shows_on_a_terminal_only(where, monkeypatch):
    stream = _as_terminal(monkeypatch)
    if where == "pipe":
        stream = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
    with silenced(where == "silenced"):
        assert list(progress_bar(range(3), desc="scoring", quiet=where == "quiet")) == [0, 1, 2]
        with stage("fetching", quiet=where == "quiet"):
            pass
    if where == "terminal":
        assert "scoring" in stream.getvalue() and "3/3" in stream.getvalue()
        assert "fetching ..." in stream.getvalue() and "fetching: done in" in stream.getvalue()
    else:
        assert stream.getvalue() == ""


def test_silenced_nests_and_cannot_be_undone_inside():
    assert not is_silenced()
    with silenced(), silenced(False):  # a nested `quiet=False` does not turn progress back on
        assert is_silenced()
    with silenced(False):
        assert not is_silenced() and is_silenced(quiet=True)
    assert not is_silenced()


def test_perplexity_counts_its_batches_and_scores_the_same(monkeypatch):
    from layerwise.data.packing import PackedBlocks
    from layerwise.eval.perplexity import perplexity
    from layerwise_core import tiny_llama

    terminal = _as_terminal(monkeypatch)
    model = tiny_llama()
    blocks = PackedBlocks(torch.randint(0, 128, (10 * 16 + 1,)), 16)  # 10 blocks: 3 batches of 4
    quiet = perplexity(model, blocks, batch_size=4)
    assert terminal.getvalue() == ""  # off by default: pretrain's periodic validation stays clean
    shown = perplexity(model, blocks, batch_size=4, progress=True)
    assert "validation perplexity" in terminal.getvalue() and "3/3" in terminal.getvalue()
    assert shown == quiet


def test_depth_report_counts_every_scored_model(tmp_path, monkeypatch):
    from transformers import ByT5Tokenizer

    from depth_probe import PerplexityScorer
    from layerwise.eval.depth import probe_model
    from layerwise_core import tiny_llama

    terminal = _as_terminal(monkeypatch)
    calls = []
    original = PerplexityScorer.__call__
    monkeypatch.setattr(
        PerplexityScorer, "__call__", lambda s, m: calls.append(1) or original(s, m)
    )
    model, tokenizer = tiny_llama(vocab_size=384, num_hidden_layers=4), ByT5Tokenizer()
    texts = ["The cat sat on the mat.", "To be, or not to be."]
    held_out = ["Now is the winter of our discontent.", "All the world's a stage."]
    report = probe_model(model, tokenizer, texts, tmp_path, held_out=held_out, max_length=32)
    assert len(calls) > 4  # at least the single-layer sweep: the full model + 4 removals
    assert f"depth report: pruned models scored: {len(calls)}it" in terminal.getvalue()
    [single] = [s for s in report.sweeps if s.kind == "single_layer"]
    assert single.scores["val_ppl"] and single.baseline["val_ppl"] == pytest.approx(
        original(PerplexityScorer(*_encode(tokenizer, held_out)), model)
    )


def _encode(tokenizer, texts):
    from depth_probe.report import encode_texts

    return encode_texts(tokenizer, texts, 32)


def test_a_download_says_so_unless_quiet(tmp_path, monkeypatch):
    from layerwise.data.cache import pip_download

    def fake_pip(cmd, **kwargs):  # writes the file where pip would, into its -d folder
        folder = cmd[cmd.index("-d") + 1]
        with open(os.path.join(folder, "pkg-1.0.whl"), "wb") as handle:
            handle.write(b"wheel")
        return subprocess.CompletedProcess(cmd, 0, stdout="", stderr="")

    monkeypatch.setattr("layerwise.data.cache.subprocess.run", fake_pip)
    terminal = _as_terminal(monkeypatch)
    sha = hashlib.sha256(b"wheel").hexdigest()
    pip_download("pkg==1.0", tmp_path / "quiet", "pkg-1.0.whl", sha256=sha, quiet=True)
    assert terminal.getvalue() == ""
    pip_download("pkg==1.0", tmp_path / "shown", "pkg-1.0.whl", sha256=sha)
    assert "downloading pkg==1.0 from the package index (once) ..." in terminal.getvalue()
    before = terminal.getvalue()
    pip_download("pkg==1.0", tmp_path / "shown", "pkg-1.0.whl", sha256=sha)  # cached: no line
    assert terminal.getvalue() == before


def test_tokenizer_training_shows_the_trainers_bar_on_a_real_terminal():
    """The `tokenizers` trainer draws on file descriptor 2 itself: run it on a pseudo-terminal."""
    code = (
        "import sys\n"
        "from layerwise.data.tokenizer import train_bpe_tokenizer as train\n"
        "texts = ['the cat sat on the mat'] * 50\n"
        "train(texts, 300, quiet=True)\n"
        "print('QUIET DONE', file=sys.stderr, flush=True)\n"
        "train(texts, 300)\n"
    )
    main, child = pty.openpty()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(
        [sys.executable, "-c", code], stderr=child, stdout=subprocess.PIPE, env=env, timeout=120
    )
    os.close(child)
    output = b""
    while True:
        try:
            chunk = os.read(main, 1 << 16)
        except OSError:  # the child end is closed and everything was read
            break
        if not chunk:
            break
        output += chunk
    os.close(main)
    assert result.returncode == 0, output[-2000:]
    quiet, _, shown = output.decode(errors="replace").partition("QUIET DONE")
    assert "Compute merges" not in quiet and "Compute merges" in shown

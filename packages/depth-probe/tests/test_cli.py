"""The `depth-probe` command on bad input: one line on stderr naming the fix, exit status 2, and
no report folder. (The successful command is tested in test_report.py.)"""

import pytest

from depth_probe.cli import main
from layerwise_core import tiny_llama

TEXT = " ".join(["the cat sat on the mat 1 plus 2 is 3"] * 10)  # 110 tokens


@pytest.fixture
def saved(tmp_path, tokenizer):
    """A tiny Llama (vocabulary 40) and its 32-word tokenizer saved together, and a text file."""
    tiny_llama(vocab_size=40).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "text.txt").write_text(TEXT)
    return tmp_path


def _fails(capsys, argv, out):
    """main(argv) returns 2, prints exactly one stderr line, and creates no report folder."""
    capsys.readouterr()  # what the fixtures printed
    assert main([*argv, "--out", str(out), "--max-length", "8", "--rows", "2"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and not out.exists()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    return lines[0]


def test_missing_model_folder(saved, capsys):
    line = _fails(
        capsys, ["--model", str(saved / "nope"), "--text", str(saved / "text.txt")], saved / "out"
    )
    assert line == (
        f"depth-probe: error: --model '{saved / 'nope'}' does not exist: pass the folder that holds "
        "config.json (e.g. a run's final/)"
    )


def test_hub_id_typed_as_a_path(saved, capsys, monkeypatch):
    monkeypatch.chdir(saved)
    line = _fails(capsys, ["--model", "Qwen/Qwen2-0.5B", "--text", "text.txt"], saved / "out")
    assert line == (
        "depth-probe: error: --model 'Qwen/Qwen2-0.5B' is not a local folder (it looks like a "
        "Hugging Face hub id, and models are only read from disk): download it first, e.g. "
        "`hf download Qwen/Qwen2-0.5B --local-dir models/Qwen2-0.5B`, then pass models/Qwen2-0.5B"
    )


def test_missing_text_file(saved, capsys):
    line = _fails(
        capsys, ["--model", str(saved / "model"), "--text", str(saved / "none.txt")], saved / "out"
    )
    assert line == (
        f"depth-probe: error: --text '{saved / 'none.txt'}' does not exist: pass a UTF-8 text file"
    )


def test_bad_json_line_in_qa_names_file_and_line(saved, capsys):
    qa = saved / "qa.jsonl"
    qa.write_text(
        '{"prompt": "1 plus 2 is", "answer": "3"}\n{"prompt": "3 plus 4 is" "answer": 7}\n'
    )
    argv = ["--model", str(saved / "model"), "--text", str(saved / "text.txt"), "--qa", str(qa)]
    assert _fails(capsys, argv, saved / "out") == (
        f"depth-probe: error: {qa}:2: not valid JSON (Expecting ',' delimiter at column 26): fix "
        "that line (one JSON object per line)"
    )
    qa.write_text('{"prompt": "1 plus 2 is", "answer": "3"}\n\n{"question": "3 plus 4 is"}\n')
    assert _fails(capsys, argv, saved / "out") == (
        f'depth-probe: error: {qa}:3: expected {{"prompt": "...", "answer": ...}}, got keys '
        "['question']: give every line a string prompt and an answer"
    )


def test_tokenizer_larger_than_the_model_vocabulary(saved, capsys):
    tiny_llama(vocab_size=20).save_pretrained(saved / "small")  # 32-token tokenizer, 20 rows
    line = _fails(
        capsys,
        [
            "--model",
            str(saved / "small"),
            "--tokenizer",
            str(saved / "model"),
            "--text",
            str(saved / "text.txt"),
        ],
        saved / "out",
    )
    assert line == (
        f"depth-probe: error: --tokenizer '{saved / 'model'}' has 32 tokens but the model embeds "
        "only 20 (ids 20..31 would index past its embedding table): pass --tokenizer with the "
        "tokenizer the model was trained with"
    )


def test_model_folder_without_a_tokenizer(saved, capsys):
    tiny_llama(vocab_size=40).save_pretrained(saved / "bare")
    line = _fails(
        capsys, ["--model", str(saved / "bare"), "--text", str(saved / "text.txt")], saved / "out"
    )
    assert line.startswith(f"depth-probe: error: --model '{saved / 'bare'}' holds no tokenizer it ")
    assert line.endswith("): save its tokenizer there or pass --tokenizer FOLDER")


def test_text_shorter_than_one_window(saved, capsys):
    (saved / "short.txt").write_text("the cat sat")
    argv = ["--model", str(saved / "model"), "--text", str(saved / "short.txt")]
    assert _fails(capsys, argv, saved / "out") == (
        "depth-probe: error: the text has 3 tokens, fewer than the 8 needed: give more text or "
        "lower --max-length / --rows"
    )


def test_unexpected_errors_keep_their_traceback(saved, monkeypatch):
    import depth_probe.cli as cli

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(cli, "load_model", broken)
    argv = ["--model", str(saved / "model"), "--text", str(saved / "text.txt")]
    with pytest.raises(RuntimeError, match="a bug"):
        main([*argv, "--out", str(saved / "o"), "--max-length", "8", "--rows", "2"])

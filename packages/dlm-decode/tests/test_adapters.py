"""Adapters: conventions read from the config, Dream's shift, left padding, loading from disk."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dlm_decode import (
    LLADA_SPECIAL_IDS,
    LLaDA,
    align_logits,
    as_masked_diffusion_lm,
    generate,
    load_masked_diffusion_lm,
)
from layerwise_core.tiny_models import tiny_bidirectional, tiny_shifted_bidirectional


def test_align_logits_is_dreams_shift():
    raw = torch.arange(4.0).reshape(1, 4, 1)
    assert align_logits(raw, 0).flatten().tolist() == [0, 1, 2, 3]
    assert align_logits(raw, 1).flatten().tolist() == [0, 0, 1, 2]
    with pytest.raises(ValueError, match="logit_shift"):
        align_logits(raw, 2)


def test_conventions_from_config():
    llada_like = as_masked_diffusion_lm(tiny_bidirectional(mask_token_id=100))
    assert (llada_like.mask_token_id, llada_like.logit_shift) == (100, 0)
    dream_like = as_masked_diffusion_lm(tiny_shifted_bidirectional())
    assert (dream_like.mask_token_id, dream_like.logit_shift) == (127, 1)
    x = torch.randint(0, 100, (2, 6))
    raw = dream_like.model(input_ids=x).logits
    torch.testing.assert_close(dream_like.logits(x)[:, 1:], raw[:, :-1])

    class Remote(nn.Module):  # what LLaDA's remote code looks like to the adapter
        config = SimpleNamespace(model_type="llada")

    lm = as_masked_diffusion_lm(Remote())
    assert (lm.mask_token_id, lm.logit_shift, lm.call_style) == (126336, 0, "llada")
    assert lm.eos_token_id == LLADA_SPECIAL_IDS["eos"] and lm.eot_token_id == 126348
    Remote.config = SimpleNamespace(model_type="Dream")
    lm = as_masked_diffusion_lm(Remote())
    assert (lm.mask_token_id, lm.logit_shift, lm.call_style) == (151666, 1, "dream")


def test_unknown_models_get_an_error_naming_the_fix():
    model = nn.Linear(2, 2)
    model.config = SimpleNamespace(model_type="gpt2")
    with pytest.raises(ValueError, match="mask_token_id="):
        as_masked_diffusion_lm(model)
    with pytest.raises(ValueError, match="logit_shift=0"):
        as_masked_diffusion_lm(model, mask_token_id=5)
    assert as_masked_diffusion_lm(model, mask_token_id=5, logit_shift=1).logit_shift == 1


@pytest.mark.parametrize("make", [tiny_bidirectional, tiny_shifted_bidirectional])
def test_left_padding_gives_the_unpadded_logits(make):
    lm = as_masked_diffusion_lm(make(seed=0, initializer_range=0.3))
    x = torch.tensor([[9, 3, 7, 127, 127]])
    padded = torch.tensor([[0, 0, 9, 3, 7, 127, 127]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1]])
    # the first real position has no left neighbour under Dream's shift: compare from the second
    got, want = lm.logits(padded, mask)[:, 3:], lm.logits(x)[:, 1:]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_batched_left_padded_llada_equals_per_row():
    model = tiny_bidirectional(seed=0, initializer_range=0.3)
    prompts = [torch.tensor([5, 9, 17, 3]), torch.tensor([44, 2]), torch.tensor([8])]
    batch = torch.tensor([[5, 9, 17, 3], [0, 0, 44, 2], [0, 0, 0, 8]])
    mask = (torch.arange(4)[None, :] >= torch.tensor([[0], [2], [3]])).long()
    strategy = LLaDA(steps=8, block_length=4)
    batched = generate(model, batch, strategy, gen_length=8, attention_mask=mask)
    for r, prompt in enumerate(prompts):
        alone = generate(model, prompt[None], strategy, gen_length=8)
        assert torch.equal(alone.generated[0], batched.generated[r])


def test_load_from_disk(tmp_path):
    model = tiny_shifted_bidirectional(seed=3)
    model.save_pretrained(tmp_path)
    lm = load_masked_diffusion_lm(str(tmp_path))
    assert (lm.mask_token_id, lm.logit_shift) == (127, 1)
    x = torch.randint(0, 100, (1, 5))
    torch.testing.assert_close(lm.logits(x), as_masked_diffusion_lm(model).logits(x))


def _tiny_native_llada(seed: int = 0):
    from dlm_decode.models.llada import LLaDAConfig, LLaDAModelLM

    torch.manual_seed(seed)
    config = LLaDAConfig(
        d_model=32,
        n_heads=4,
        n_kv_heads=2,
        n_layers=2,
        mlp_hidden_size=48,
        vocab_size=60,
        embedding_size=64,
        rope_theta=10000.0,
        max_sequence_length=64,
        mask_token_id=59,
        eos_token_id=58,
        pad_token_id=58,
        init_device="cpu",
    )
    return LLaDAModelLM(config).eval()


def _tiny_native_dream(seed: int = 0):
    from dlm_decode.models.dream import DreamConfig, DreamModel

    torch.manual_seed(seed)
    config = DreamConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        mask_token_id=63,
        pad_token_id=0,
        eos_token_id=1,
    )
    return DreamModel(config).eval()


@pytest.mark.parametrize(
    ("make", "want"), [(_tiny_native_llada, (59, 0, 58)), (_tiny_native_dream, (63, 1, 1))]
)
def test_native_classes_get_the_hf_call_style(make, want):
    """The native LLaDA/Dream classes: ids and shift from their configs (not the released ids),
    call style "hf", so the Fast-dLLM caches run on their backbones; the refresh pass of the cache
    path gives the plain logits (shifted ones aligned for Dream)."""
    from dlm_decode.kv_cache import BlockKVCache, cached_logits

    model = make()
    lm = as_masked_diffusion_lm(model)
    assert (lm.mask_token_id, lm.logit_shift, lm.eos_token_id) == want
    assert lm.call_style == "hf" and lm.supports_kv_cache
    x = torch.randint(0, 50, (2, 9))
    x[:, 5:] = lm.mask_token_id
    with torch.no_grad():
        torch.testing.assert_close(cached_logits(lm, x, None, BlockKVCache()), lm.logits(x))


def test_remote_code_keeps_its_call_style_and_a_flag_overrides_the_module():
    """Same model types, decided by the class: remote code (any module outside dlm_decode.models)
    keeps "llada" / "dream"; `_dlm_native = True` marks a native class wherever it lives."""

    class RemoteLLaDA(nn.Module):
        config = SimpleNamespace(model_type="llada")

    RemoteLLaDA.__module__ = "transformers_modules.GSAI_ML.LLaDA_8B_Instruct.modeling_llada"
    assert as_masked_diffusion_lm(RemoteLLaDA()).call_style == "llada"

    class FlaggedDream(nn.Module):
        _dlm_native = True
        config = SimpleNamespace(model_type="Dream")

    lm = as_masked_diffusion_lm(FlaggedDream())
    assert (lm.call_style, lm.mask_token_id, lm.logit_shift) == ("hf", 151666, 1)
    native = _tiny_native_llada()
    assert type(native).__module__ == "dlm_decode.models.llada"


@pytest.mark.parametrize("make", [_tiny_native_llada, _tiny_native_dream])
def test_native_checkpoints_load_without_remote_code(tmp_path, make):
    model = make(seed=4)
    model.save_pretrained(tmp_path)
    lm = load_masked_diffusion_lm(str(tmp_path))
    assert type(lm.model) is type(model) and lm.call_style == "hf"
    x = torch.randint(0, 50, (1, 7))
    with torch.no_grad():
        torch.testing.assert_close(lm.logits(x), as_masked_diffusion_lm(model).logits(x))

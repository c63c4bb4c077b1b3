"""add_mask_token: once, resized only when needed, tied embeddings stay one tensor, rows preserved."""

from __future__ import annotations

import torch

from layerwise_core import tiny_llama, tiny_qwen2
from meap import add_mask_token


def test_adds_the_token_once(bpe_tokenizer_factory, tmp_path):
    tok = bpe_tokenizer_factory()
    before = len(tok)
    assert "[MASK]" not in tok.get_vocab()
    mask_id = add_mask_token(tok)
    assert mask_id == before and len(tok) == before + 1
    assert add_mask_token(tok) == mask_id and len(tok) == before + 1  # idempotent
    assert tok.mask_token == "[MASK]" and tok.mask_token_id == mask_id
    ids = tok("a [MASK] b", add_special_tokens=False)["input_ids"]
    assert ids.count(mask_id) == 1  # one token, never split by BPE
    tok.save_pretrained(tmp_path)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path).convert_tokens_to_ids("[MASK]") == mask_id


def test_tied_embeddings_stay_tied_and_old_rows_are_kept(bpe_tokenizer_factory):
    tok = bpe_tokenizer_factory()
    model = tiny_llama(seed=0, vocab_size=len(tok), tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    old = model.model.embed_tokens.weight.detach().clone()
    mask_id = add_mask_token(tok, model, pad_to_multiple_of=8)
    weight = model.model.embed_tokens.weight
    assert model.lm_head.weight is weight  # still one tensor
    assert weight.shape[0] % 8 == 0 and weight.shape[0] > mask_id
    assert model.config.vocab_size == weight.shape[0]
    torch.testing.assert_close(weight[: old.shape[0]], old, rtol=0, atol=0)
    # a gradient step moves input and output embedding together
    ids = torch.tensor([[1, mask_id, 3, 4]])
    model.train()
    model(ids, labels=ids).loss.backward()
    torch.optim.SGD(model.parameters(), lr=1.0).step()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    shape = model.model.embed_tokens.weight.shape
    again = add_mask_token(tok, model, pad_to_multiple_of=8)
    assert again == mask_id and model.model.embed_tokens.weight.shape == shape  # no second resize


def test_untied_output_embedding_is_resized_too(bpe_tokenizer_factory):
    tok = bpe_tokenizer_factory()
    model = tiny_qwen2(seed=0, vocab_size=len(tok))
    mask_id = add_mask_token(tok, model)
    assert model.lm_head.weight.shape[0] == model.model.embed_tokens.weight.shape[0] == mask_id + 1
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    logits = model(torch.tensor([[mask_id, 5]])).logits
    assert logits.shape[-1] == mask_id + 1


def test_no_resize_when_the_row_already_exists(bpe_tokenizer_factory):
    """The official pre-training configs keep spare rows (vocab 32064 for 32001 tokens)."""
    tok = bpe_tokenizer_factory()
    model = tiny_llama(seed=0, vocab_size=len(tok) + 64)
    weight = model.model.embed_tokens.weight
    mask_id = add_mask_token(tok, model)
    assert mask_id < weight.shape[0] and model.model.embed_tokens.weight is weight

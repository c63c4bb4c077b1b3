"""Give any tokenizer/model pair a [MASK] token: MEAP's only change to the model (arXiv 2502.07490).

The official code adds "[MASK]" as an additional special token of the Llama-2 tokenizer (id 32000)
and either sizes the embedding with room to spare (pre-training configs: vocab_size 32064) or calls
`resize_token_embeddings(len(tokenizer))` (SFT). `add_mask_token` does both safely: it resizes only
when the id does not fit the embedding matrix, through Hugging Face's resize (so tied input/output
embeddings stay one tensor and `config.vocab_size` follows), and it is idempotent.
"""

from __future__ import annotations

from typing import Any

__all__ = ["add_mask_token"]


def _is_tied(model: Any) -> bool:
    out = model.get_output_embeddings()
    return out is not None and out.weight is model.get_input_embeddings().weight


def add_mask_token(
    tokenizer: Any,
    model: Any = None,
    token: str = "[MASK]",
    *,
    pad_to_multiple_of: int | None = None,
) -> int:
    """Add `token` to `tokenizer` (once) and make `model`'s embeddings hold its row; return its id.

    If the tokenizer already has `token` (as BPE tokenizers trained by `layerwise` do) it is reused.
    The model is resized to `len(tokenizer)` (rounded up to `pad_to_multiple_of`) only when the id
    is out of range; new rows are initialised by Hugging Face's resize (mean-and-covariance of the
    old rows). Tied embeddings stay tied. `tokenizer.mask_token` is set if it was unset.
    """
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    if token not in vocab:
        tokenizer.add_tokens(
            [AddedToken(token, special=True, normalized=False)], special_tokens=True
        )
    token_id = tokenizer.convert_tokens_to_ids(token)
    if token_id is None or (token_id == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise RuntimeError(
            f"tokenizer {type(tokenizer).__name__} did not accept the token {token!r}"
        )
    if getattr(tokenizer, "mask_token", None) is None:
        tokenizer.mask_token = token
    if model is None:
        return token_id

    embeddings = model.get_input_embeddings()
    if embeddings is None:
        raise ValueError(
            f"{type(model).__name__} exposes no input embeddings (get_input_embeddings() is None); "
            "add_mask_token needs a Hugging Face PreTrainedModel"
        )
    was_tied = _is_tied(model)
    if token_id >= embeddings.num_embeddings:
        model.resize_token_embeddings(
            max(len(tokenizer), token_id + 1), pad_to_multiple_of=pad_to_multiple_of
        )
    if was_tied and not _is_tied(model):
        model.tie_weights()
    if was_tied and not _is_tied(model):
        raise RuntimeError(
            "resizing untied the input and output embeddings; call model.tie_weights()"
        )
    output = model.get_output_embeddings()
    if output is not None and output.weight.shape[0] <= token_id:
        raise RuntimeError(
            f"the output embedding has {output.weight.shape[0]} rows, too few for id {token_id}: "
            "resize it with model.resize_token_embeddings(len(tokenizer))"
        )
    return token_id

import math

import torch

from layerwise_core import tiny_llama
from ln_scaling import REFERENCE_EMBEDDING_STD, init_weights


def test_paper_init_and_reference_quirk():
    model = tiny_llama(vocab_size=512, hidden_size=64)
    init_weights(model, 0.02)
    emb = model.model.embed_tokens.weight
    assert abs(emb.std().item() - 0.02) < 0.002
    assert torch.equal(model.model.layers[0].input_layernorm.weight, torch.ones(64))
    init_weights(model, 0.02, reference_quirks=True)
    assert math.sqrt(0.4) == REFERENCE_EMBEDDING_STD
    assert abs(model.model.embed_tokens.weight.std().item() - 0.632) < 0.02
    assert abs(model.lm_head.weight.std().item() - 0.02) < 0.002  # only the embedding changes

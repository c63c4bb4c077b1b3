"""cache_keyword: the cache argument's name read from the callable, on hand-made signatures and on
the installed transformers (whichever side of the 5.25 rename `past_key_values` -> `cache`)."""

import math
import warnings

import torch

from layerwise_core import tiny_llama
from layerwise_core.hf_cache import cache_keyword


def test_names_read_from_hand_made_signatures():
    def new(input_ids, cache=None, **kwargs): ...

    def old(input_ids, past_key_values=None, **kwargs): ...

    def neither(input_ids, **kwargs): ...

    assert cache_keyword(new) == "cache"
    assert cache_keyword(old) == "past_key_values"
    assert cache_keyword(neither) == "past_key_values"  # accepted by every transformers 4.x/5.x
    assert cache_keyword(math.hypot) == "past_key_values"  # no inspectable signature


def test_the_keyword_of_the_installed_transformers_fills_the_cache_without_warnings():
    from transformers import DynamicCache

    model = tiny_llama(seed=0).eval()
    ids = torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(0))
    cache = DynamicCache()
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # a deprecated name warns: not that one
        out = model.model(input_ids=ids, **{cache_keyword(model.model.forward): cache},
                          use_cache=True)  # fmt: skip
        assert cache.get_seq_length() == 6  # the cache handed over is the one filled
        assert out[cache_keyword(type(out))] is cache  # the output class uses the same name
        step = model(input_ids=ids[:, :1], **{cache_keyword(model.forward): cache}, use_cache=True)
    assert cache.get_seq_length() == 7
    full = model(input_ids=torch.cat([ids, ids[:, :1]], 1)).logits[:, -1]
    torch.testing.assert_close(step.logits[:, -1], full, rtol=1e-5, atol=1e-5)

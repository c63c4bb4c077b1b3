"""The bidirectional test models really attend both ways; padding keys are ignored."""

import pytest
import torch

from layerwise_core import find_decoder, tiny_bidirectional, tiny_llama, tiny_shifted_bidirectional


def test_bidirectional_sees_the_future_causal_does_not():
    ids = torch.randint(0, 100, (1, 6))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % 100
    with torch.no_grad():
        bi = tiny_bidirectional()
        assert not torch.allclose(bi(ids).logits[0, 0], bi(changed).logits[0, 0])
        causal = tiny_llama()
        torch.testing.assert_close(causal(ids).logits[0, 0], causal(changed).logits[0, 0])


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_keys_are_masked(attn):
    # eager adds the 4-D mask to the scores: a bool mask there once let padding keys in
    model = tiny_bidirectional(attn_implementation=attn)
    ids = torch.randint(0, 100, (1, 6))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0]])
    other = ids.clone()
    other[0, 4:] = 7
    with torch.no_grad():
        a = model(ids, attention_mask=mask).logits[0, :4]
        b = model(other, attention_mask=mask).logits[0, :4]
        c = model(ids[:, :4]).logits[0]
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)


def test_config_flags_and_save_load_round_trip(tmp_path):
    from transformers import AutoModelForMaskedLM

    llada, dream = tiny_bidirectional(), tiny_shifted_bidirectional()
    assert (llada.config.logit_shift, dream.config.logit_shift) == (0, 1)
    assert llada.config.mask_token_id == 127
    assert find_decoder(dream).family == "layerwise_bidirectional_llama"
    dream.save_pretrained(tmp_path)
    again = AutoModelForMaskedLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 100, (2, 5))
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, dream(ids).logits)
    assert again.config.logit_shift == 1


def test_without_transformers_the_error_names_the_extra():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "import layerwise_core\n"
        "for name in ('tiny_llama', 'tiny_qwen2', 'tiny_mixtral', 'tiny_bidirectional',\n"
        "             'tiny_shifted_bidirectional'):\n"
        "    try:\n"
        "        getattr(layerwise_core, name)()\n"
        "    except ImportError as error:\n"
        "        print(error)\n"
        "layerwise_core.tiny_llada_style()  # pure torch: works without transformers\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 5
    for name, line in zip(
        ("tiny_llama", "tiny_qwen2", "tiny_mixtral", "tiny_bidirectional"), lines
    ):
        assert (
            line.startswith(f"layerwise_core.{name} ")
            and "pip install 'layerwise-core[hf]'" in line
        )

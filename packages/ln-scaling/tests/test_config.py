"""NormConfig: defaults equal the patchers', a bare string is the scheme, `.apply` equals the
patchers applied by hand (and `apply_norm_scheme`), mix_ln+lns equals a forward written from the
equations, and every scheme applied through the config reloads in a fresh interpreter with
identical logits (also after a simulated post-load kernelization)."""

import inspect
import math

import pytest
import torch
from pydantic import Field

from layerwise_core import ConfigError, LayerwiseConfig, tiny_llama, tiny_qwen2
from layerwise_core.testing import run_python
from ln_scaling import (
    SCHEMES,
    NormConfig,
    apply_layernorm_scaling,
    apply_mix_ln,
    apply_norm_scheme,
    norm_scheme,
)


class _Model(LayerwiseConfig):  # a parent config, as the integration's `model:` section
    norm: NormConfig = Field(default_factory=NormConfig)


def _perturb_norms(model):
    # trained-like norms (the new Mix-LN norms start at ones), the same for the same parameter name
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(1.0, 0.2, generator=torch.Generator().manual_seed(len(name)))
    return model


def test_defaults_and_the_string_shorthand():
    cfg = NormConfig()
    assert (cfg.scheme, cfg.post_ln_fraction) == ("pre_ln", 0.25)  # Mix-LN's alpha = 0.25
    for function in (apply_mix_ln, apply_norm_scheme):
        assert inspect.signature(function).parameters["post_ln_fraction"].default == 0.25
    assert SCHEMES == ("pre_ln", "lns", "mix_ln", "mix_ln+lns")
    assert NormConfig.model_validate("lns") == NormConfig(scheme="lns")
    assert _Model.from_dict({"norm": "mix_ln+lns"}).norm == NormConfig(scheme="mix_ln+lns")
    nested = _Model.from_dict({"norm": {"scheme": "mix_ln"}}, ["norm.post_ln_fraction=0.5"])
    assert nested.norm == NormConfig(scheme="mix_ln", post_ln_fraction=0.5)
    assert _Model.from_dict(nested.to_dict()) == nested  # YAML round trip


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"norm": "post_ln"}, r"field 'norm.scheme'.*'pre_ln', 'lns', 'mix_ln' or 'mix_ln\+lns'"),
        ({"norm": {"scheme": "mix_ln", "post_ln_fraction": 1.5}}, r"field 'norm.post_ln_fraction'"),
        ({"norm": {"post_ln_fractoin": 0.5}}, r"did you mean 'norm.post_ln_fraction'"),
    ],
)
def test_validation_errors(data, message):
    with pytest.raises(ConfigError, match=message):
        _Model.from_dict(data)


def _by_hand(model, scheme, fraction):
    if scheme in ("mix_ln", "mix_ln+lns"):
        apply_mix_ln(model, fraction)
    if scheme in ("lns", "mix_ln+lns"):
        apply_layernorm_scaling(model)
    return model


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("factory", [tiny_llama, tiny_qwen2])
def test_apply_equals_the_patchers_and_apply_norm_scheme(scheme, factory):
    ids = torch.randint(0, 128, (2, 7), generator=torch.Generator().manual_seed(0))
    plain = factory(num_hidden_layers=4)
    models = [
        NormConfig(scheme=scheme, post_ln_fraction=0.5).apply(factory(num_hidden_layers=4)),
        _by_hand(factory(num_hidden_layers=4), scheme, 0.5),
        apply_norm_scheme(factory(num_hidden_layers=4), scheme, post_ln_fraction=0.5),
    ]
    with torch.no_grad():
        logits = [_perturb_norms(m)(ids).logits for m in [plain, *models]]
    for model, got in zip(models, logits[1:], strict=True):
        assert norm_scheme(model.config) == scheme
        assert model.config.to_dict() == models[1].config.to_dict()
        assert list(model.state_dict()) == list(models[1].state_dict())
        assert torch.equal(got, logits[2])
    assert torch.equal(logits[1], logits[0]) == (scheme == "pre_ln")  # the scheme changes the model


def _rms(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def _reference_logits(model, ids, post, scale):
    """The mix_ln+lns forward from the equations: blocks 0..post-1 Post-LN, the rest Pre-LN with both
    pre-norms multiplied by scale(index) (LNS: 1/sqrt(l), l = index + 1)."""
    inner, eps = model.model, model.config.rms_norm_eps
    h = inner.embed_tokens(ids)
    rope = inner.rotary_emb(h, torch.arange(ids.shape[1])[None])
    for index, layer in enumerate(inner.layers):
        attn = layer.self_attn
        if index < post:  # h = N_a(x + Attn(x)); out = N_f(h + MLP(h))
            a = attn(hidden_states=h, attention_mask=None, position_embeddings=rope)[0]
            h = _rms(h + a, layer.post_attention_layernorm.weight, eps)
            h = _rms(h + layer.mlp(h), layer.post_feedforward_layernorm.weight, eps)
        else:  # h = x + Attn(N_in(x) * s); out = h + MLP(N_post(h) * s)
            x = _rms(h, layer.input_layernorm.weight, eps) * scale(index)
            h = h + attn(hidden_states=x, attention_mask=None, position_embeddings=rope)[0]
            h = h + layer.mlp(_rms(h, layer.post_attention_layernorm.weight, eps) * scale(index))
    return model.lm_head(_rms(h, inner.norm.weight, eps))


def test_mix_ln_plus_lns_equals_the_equations():
    cfg = NormConfig(scheme="mix_ln+lns", post_ln_fraction=0.5)
    model = _perturb_norms(cfg.apply(tiny_llama(num_hidden_layers=6)))
    assert model.config.mix_ln_post_layers == 3  # floor(0.5 * 6)
    # Post-LN blocks: identity input norm, nothing scaled; then l = 4, 5, 6
    scales = [getattr(b.input_layernorm, "_lns_scale", None) for b in model.model.layers]
    assert scales == [None, None, None, 1 / 2, 1 / math.sqrt(5), 1 / math.sqrt(6)]
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(ids).logits
        lns = _reference_logits(model, ids, 3, lambda i: 1 / math.sqrt(i + 1))
        torch.testing.assert_close(ours, lns, atol=1e-5, rtol=1e-5)
        # the test can fail: plain Mix-LN (no scale) and l restarted after the Post-LN blocks differ
        for wrong in (lambda i: 1.0, lambda i: 1 / math.sqrt(i - 3 + 1)):
            assert (_reference_logits(model, ids, 3, wrong) - ours).abs().max() > 1e-3


_RELOAD = """
import sys, types
from pathlib import Path
import torch
import ln_scaling
from transformers import AutoModelForCausalLM

root = Path(sys.argv[1])
ids = torch.load(root / "ids.pt")
for scheme in ln_scaling.SCHEMES:
    folder = root / scheme
    expected = torch.load(folder / "expected.pt")
    with torch.no_grad():
        for load in (ln_scaling.from_pretrained, AutoModelForCausalLM.from_pretrained):
            model = load(folder).eval()
            assert ln_scaling.norm_scheme(model.config) == scheme, (scheme, load)
            assert torch.equal(model(ids).logits, expected), (scheme, load)
        # what transformers >= 5.25 does after loading on CPU: the class forward comes back
        scaled = [m for m in model.modules() if hasattr(m, "_lns_scale")]
        for norm in scaled:
            norm.__dict__.pop("forward")
        assert ln_scaling.rebind_layernorm_scaling(model) == len(scaled)
        assert torch.equal(model(ids).logits, expected), (scheme, "rebound")
    print(scheme, len(scaled))
"""


def test_every_scheme_saves_and_reloads_in_a_second_process(tmp_path):
    ids = torch.randint(0, 128, (2, 6), generator=torch.Generator().manual_seed(0))
    torch.save(ids, tmp_path / "ids.pt")
    for scheme in SCHEMES:
        cfg = NormConfig(scheme=scheme, post_ln_fraction=0.5)
        model = _perturb_norms(cfg.apply(tiny_llama(num_hidden_layers=4)))
        model.save_pretrained(tmp_path / scheme)
        with torch.no_grad():
            torch.save(model(ids).logits, tmp_path / scheme / "expected.pt")
    lines = run_python(_RELOAD, tmp_path).stdout.split()
    # scaled norms: lns 2 per block x 4; mix_ln+lns 2 x the 2 Pre-LN blocks
    assert lines == ["pre_ln", "0", "lns", "8", "mix_ln", "0", "mix_ln+lns", "4"]

"""Find the parts of a decoder-only language model: embeddings, blocks, sublayers, norms, head.

Every method package patches or probes the same few places of a transformer block::

    h   = x + A(N_attn(x))        # attention sublayer, pre-norm N_attn
    out = h + M(N_mlp(h))         # MLP (dense or MoE) sublayer, pre-norm N_mlp

`find_decoder` returns a `DecoderMap` naming those places for the Hugging Face families we support,
so that no method package hard-codes `model.model.layers[i].input_layernorm`. Unknown models get
an error listing what was found and how to pass explicit attribute names (`DecoderSpec`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from torch import nn

__all__ = ["DecoderMap", "DecoderSpec", "LayerMap", "find_decoder", "get_submodule_or_none"]


@dataclass(frozen=True)
class DecoderSpec:
    """Attribute paths of one architecture. Paths are dotted; layer-level names are relative to a block.

    `attn_contribution` / `mlp_contribution` name the module whose output is what the sublayer adds
    to the residual stream: the attention/MLP module itself for pre-norm models, the post-sublayer
    norm for Gemma2/3 and OLMo2 (which normalise the sublayer output before the addition).
    """

    embed_tokens: str
    layers: str
    attn: str | None
    mlp: str
    attn_norm: str | None  # pre-attention norm (None: post-norm architecture such as OLMo2)
    mlp_norm: str | None  # pre-MLP norm
    final_norm: str | None
    lm_head: str | None
    attn_contribution: str | None = None  # defaults to `attn`
    mlp_contribution: str | None = None  # defaults to `mlp`
    parallel_residual: bool = False  # GPT-NeoX / GPT-J style: out = x + A(N1(x)) + M(N2(x))
    family: str = "custom"


_LLAMA_LIKE = DecoderSpec(
    embed_tokens="model.embed_tokens",
    layers="model.layers",
    attn="self_attn",
    mlp="mlp",
    attn_norm="input_layernorm",
    mlp_norm="post_attention_layernorm",
    final_norm="model.norm",
    lm_head="lm_head",
    family="llama",
)

# model_type -> spec. Families whose layout equals Llama's only rename `family`.
KNOWN_SPECS: dict[str, DecoderSpec] = {
    **{
        t: replace(_LLAMA_LIKE, family=t)
        for t in (
            "llama",
            "mistral",
            "qwen2",
            "qwen3",
            "gemma",
            "phi3",
            "mixtral",
            "qwen2_moe",
            "qwen3_moe",
            "layerwise_bidirectional_llama",
            "coe",  # coe-moe's Chain-of-Experts models (Llama layout, CoE MLP)
        )
    },
    **{
        t: replace(
            _LLAMA_LIKE,
            mlp_norm="pre_feedforward_layernorm",
            attn_contribution="post_attention_layernorm",
            mlp_contribution="post_feedforward_layernorm",
            family=t,
        )
        for t in ("gemma2", "gemma3_text", "gemma3")
    },
    "olmo2": replace(
        _LLAMA_LIKE,
        attn_norm=None,
        mlp_norm=None,
        attn_contribution="post_attention_layernorm",
        mlp_contribution="post_feedforward_layernorm",
        family="olmo2",
    ),
    "gpt2": DecoderSpec(
        embed_tokens="transformer.wte",
        layers="transformer.h",
        attn="attn",
        mlp="mlp",
        attn_norm="ln_1",
        mlp_norm="ln_2",
        final_norm="transformer.ln_f",
        lm_head="lm_head",
        family="gpt2",
    ),
    "gpt_neox": DecoderSpec(
        embed_tokens="gpt_neox.embed_in",
        layers="gpt_neox.layers",
        attn="attention",
        mlp="mlp",
        attn_norm="input_layernorm",
        mlp_norm="post_attention_layernorm",
        final_norm="gpt_neox.final_layer_norm",
        lm_head="lm_head",  # `embed_out` before transformers 5: found through get_output_embeddings
        parallel_residual=True,
        family="gpt_neox",
    ),
    # LLaDA (OLMo-derived) blocks: attention is a method of the block, so the attention
    # contribution is the output projection `attn_out`; the MLP contribution is `ff_out`.
    "llada": DecoderSpec(
        embed_tokens="model.transformer.wte",
        layers="model.transformer.blocks",
        attn=None,
        mlp="ff_out",
        attn_norm="attn_norm",
        mlp_norm="ff_norm",
        final_norm="model.transformer.ln_f",
        lm_head="model.transformer.ff_out",
        attn_contribution="attn_out",
        mlp_contribution="ff_out",
        family="llada",
    ),
}


def get_submodule_or_none(root: nn.Module, path: str | None) -> nn.Module | None:
    """`root.get_submodule(path)`, or None when the path is None or missing."""
    if path is None:
        return None
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


@dataclass
class LayerMap:
    """One decoder block and the names of its parts (attribute names on `block`)."""

    index: int
    block: nn.Module
    spec: DecoderSpec

    def _get(self, name: str | None) -> nn.Module | None:
        return get_submodule_or_none(self.block, name)

    @property
    def attn(self) -> nn.Module | None:
        return self._get(self.spec.attn)

    @property
    def mlp(self) -> nn.Module:
        return self._get(self.spec.mlp)  # type: ignore[return-value]

    @property
    def attn_norm(self) -> nn.Module | None:
        return self._get(self.spec.attn_norm)

    @property
    def mlp_norm(self) -> nn.Module | None:
        return self._get(self.spec.mlp_norm)

    @property
    def attn_norm_name(self) -> str | None:
        return self.spec.attn_norm

    @property
    def mlp_norm_name(self) -> str | None:
        return self.spec.mlp_norm

    @property
    def attn_contribution(self) -> nn.Module | None:
        """Module whose output the block adds to the residual stream for attention."""
        return self._get(self.spec.attn_contribution or self.spec.attn)

    @property
    def mlp_contribution(self) -> nn.Module:
        return self._get(self.spec.mlp_contribution or self.spec.mlp)  # type: ignore[return-value]

    @property
    def is_moe(self) -> bool:
        """True when the MLP routes tokens to experts (Mixtral, Qwen2/3-MoE, ...)."""
        return hasattr(self.mlp, "experts")


@dataclass
class DecoderMap:
    """Where things live in a decoder-only model. Build with `find_decoder(model)`."""

    model: nn.Module
    spec: DecoderSpec
    embed_tokens: nn.Module
    layers: nn.ModuleList
    final_norm: nn.Module | None
    lm_head: nn.Module | None
    layer_maps: list[LayerMap] = field(default_factory=list)

    @property
    def family(self) -> str:
        return self.spec.family

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, index: int) -> LayerMap:
        return self.layer_maps[index]

    def __iter__(self):
        return iter(self.layer_maps)


def _model_type(model: nn.Module) -> str | None:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None)


def _resolve(model: nn.Module, spec: DecoderSpec) -> DecoderMap | None:
    embed = get_submodule_or_none(model, spec.embed_tokens)
    layers = get_submodule_or_none(model, spec.layers)
    if embed is None or not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        return None
    first = layers[0]
    for name in (
        spec.attn,
        spec.mlp,
        spec.attn_norm,
        spec.mlp_norm,
        spec.attn_contribution,
        spec.mlp_contribution,
    ):
        if name is not None and get_submodule_or_none(first, name) is None:
            return None
    final_norm = get_submodule_or_none(model, spec.final_norm)
    if spec.final_norm is not None and final_norm is None:
        return None
    # May be None: LLaDA with tied embeddings has no `ff_out` (logits = h @ wte.weight^T).
    lm_head = get_submodule_or_none(model, spec.lm_head)
    if lm_head is None and hasattr(model, "get_output_embeddings"):
        lm_head = model.get_output_embeddings()
    parallel = getattr(getattr(model, "config", None), "use_parallel_residual", None)
    if parallel is not None:
        spec = replace(spec, parallel_residual=bool(parallel))
    dmap = DecoderMap(model, spec, embed, layers, final_norm, lm_head)
    dmap.layer_maps = [LayerMap(i, block, spec) for i, block in enumerate(layers)]
    return dmap


def _describe(model: nn.Module) -> str:
    lists = [n for n, m in model.named_modules() if isinstance(m, nn.ModuleList)]
    first = ""
    if lists:
        block = model.get_submodule(lists[0])[0]
        first = f"; children of {lists[0]}[0]: {[n for n, _ in block.named_children()]}"
    return f"ModuleLists found: {lists[:4]}{first}"


def find_decoder(
    model: nn.Module, spec: DecoderSpec | None = None, **overrides: str | None
) -> DecoderMap:
    """Map the embeddings, decoder blocks, sublayers, norms and head of a decoder-only model.

    Supported families (tested on tiny models built from config): Llama, Mistral, Qwen2, Qwen3,
    Gemma, Gemma2, Gemma3 (text), OLMo2, Phi3, GPT-2, GPT-NeoX, Mixtral, Qwen2-MoE, Qwen3-MoE,
    LLaDA-style blocks (`attn_norm`/`ff_norm`) and the bidirectional test models of
    `layerwise_core.tiny_models`. For anything else pass `spec=DecoderSpec(...)`, or override
    single fields of the detected spec, e.g. `find_decoder(model, attn_norm="ln_attn")`.

    Raises:
        ValueError: when no known layout matches, naming what was found and how to fix it.
    """
    if spec is None:
        model_type = _model_type(model)
        candidates = []
        if model_type in KNOWN_SPECS:
            candidates.append(KNOWN_SPECS[model_type])
        candidates += [s for t, s in KNOWN_SPECS.items() if t != model_type]
        if overrides:
            candidates = [replace(s, **overrides) for s in candidates]
        for candidate in candidates:
            dmap = _resolve(model, candidate)
            if dmap is not None:
                return dmap
        raise ValueError(
            f"find_decoder: no known decoder layout matches {type(model).__name__} "
            f"(model_type={model_type!r}). {_describe(model)}. Pass explicit attribute paths, e.g. "
            "find_decoder(model, spec=DecoderSpec(embed_tokens='model.embed_tokens', "
            "layers='model.layers', attn='self_attn', mlp='mlp', attn_norm='input_layernorm', "
            "mlp_norm='post_attention_layernorm', final_norm='model.norm', lm_head='lm_head'))."
        )
    if overrides:
        spec = replace(spec, **overrides)
    dmap = _resolve(model, spec)
    if dmap is None:
        raise ValueError(
            f"find_decoder: the given DecoderSpec does not match {type(model).__name__}: "
            f"{_describe(model)}."
        )
    return dmap

"""How a LayerNorm-scaled / Mix-LN model is saved, so the Auto classes reload it as trained.

`apply_layernorm_scaling` and `apply_mix_ln` keep the model's class (e.g. `LlamaForCausalLM`) and
record the scheme in its config (`layernorm_scaling`, `mix_ln_post_layers`). The config's class
becomes a subclass of the family's, `LNScaling<Family>Config`, that behaves exactly like it in
memory (same `model_type`, same fields) but is written to config.json as

    {"model_type": "ln_scaling", "base_model_type": "llama", "layernorm_scaling": true, ...}

`import ln_scaling` registers model type "ln_scaling" with `AutoConfig`: it reads such a file
back as the family's config with the scheme, and `AutoModelForCausalLM` (or `...ForMaskedLM`)
builds the family's model, applies the recorded scheme before the weights load (so Mix-LN's extra
norms load like any parameter) and returns it as the family's class. Without ln_scaling imported,
transformers refuses the unknown model type `ln_scaling` instead of loading a different model.
"""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, PreTrainedConfig

from layerwise_core import BASE_MODEL_TYPE_KEY, import_model_packages

__all__ = ["LNS_CONFIG_KEY", "MIX_LN_CONFIG_KEY", "MODEL_TYPE", "LNScalingConfig", "record_scheme"]

MODEL_TYPE = "ln_scaling"
LNS_CONFIG_KEY = "layernorm_scaling"  # True when LayerNorm scaling is applied
MIX_LN_CONFIG_KEY = "mix_ln_post_layers"  # number of leading Post-LN blocks (Mix-LN)

_SCHEME_CONFIGS: dict[type, type] = {}  # family config class -> its LNScaling subclass


def has_scheme(config: Any) -> bool:
    """True when `config` records LayerNorm scaling or Mix-LN."""
    return getattr(config, MIX_LN_CONFIG_KEY, None) is not None or bool(
        getattr(config, LNS_CONFIG_KEY, False)
    )


def record_scheme(config: Any) -> None:
    """Give a transformers `config` the class that saves it as model type "ln_scaling" when it
    records a scheme, and its family's class again when it records none (in place)."""
    if not isinstance(config, PreTrainedConfig):
        return
    family = getattr(type(config), "_ln_scaling_family", type(config))
    config.__class__ = scheme_config_class(family) if has_scheme(config) else family


def scheme_config_class(family: type) -> type:
    """`LNScaling<Family>Config`: `family` saved as model type "ln_scaling"; registered with the
    Auto model classes that build `family`'s language model."""
    if family not in _SCHEME_CONFIGS:

        def __init__(self, **kwargs: Any) -> None:
            kwargs.pop(BASE_MODEL_TYPE_KEY, None)
            if kwargs.get("model_type") == MODEL_TYPE:
                del kwargs["model_type"]
            family.__init__(self, **kwargs)

        def to_dict(self) -> dict[str, Any]:
            output = family.to_dict(self)
            output[BASE_MODEL_TYPE_KEY] = output.get("model_type")
            output["model_type"] = MODEL_TYPE
            return output

        def __reduce__(self):  # pickled as the family's class, which pickle can find by name
            return (_unpickle_scheme_config, (family, self.__dict__))

        config_cls = type(
            f"LNScaling{family.__name__}",
            (family,),
            {
                "__init__": __init__,
                "to_dict": to_dict,
                "__reduce__": __reduce__,
                "__module__": __name__,
                "__doc__": f"`{family.__name__}` of a model with LayerNorm scaling / Mix-LN.",
                "_ln_scaling_family": family,
            },
        )
        _SCHEME_CONFIGS[family] = config_cls
        _register_models(family, config_cls)
    return _SCHEME_CONFIGS[family]


def _unpickle_scheme_config(family: type, state: dict[str, Any]):
    config = family.__new__(family)
    config.__dict__.update(state)
    config.__class__ = scheme_config_class(family)
    return config


class _RestoresScheme:
    """Mixin of the model classes registered for scheme configs: the family's model with the
    recorded scheme applied in `__init__`, returned by `from_pretrained` as the family's class."""

    _ln_scaling_family: type

    def __init__(self, config, *args, **kwargs) -> None:
        super().__init__(config, *args, **kwargs)
        _apply_recorded_scheme(self, config)

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        wants_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        missing = sorted(k for k in info["missing_keys"] if ".post_feedforward_layernorm." in k)
        if missing:
            raise ValueError(
                f"checkpoint {args[0] if args else ''} lacks the Mix-LN norms {missing[:4]}: save "
                "the model again with save_pretrained after apply_mix_ln"
            )
        model.__class__ = cls._ln_scaling_family
        # transformers >= 5.25 kernelizes after loading, which unbinds the LNS forwards
        from ln_scaling.layernorm_scaling import rebind_layernorm_scaling

        rebind_layernorm_scaling(model)
        return (model, info) if wants_info else model

    @classmethod
    def _from_config(cls, config, **kwargs):
        model = super()._from_config(config, **kwargs)
        model.__class__ = cls._ln_scaling_family
        return model


def _apply_recorded_scheme(model, config) -> None:
    from ln_scaling.layernorm_scaling import apply_layernorm_scaling
    from ln_scaling.mix_ln import make_post_ln_blocks

    count = getattr(config, MIX_LN_CONFIG_KEY, None)
    if count is not None:
        make_post_ln_blocks(model, int(count))
    if getattr(config, LNS_CONFIG_KEY, False):
        apply_layernorm_scaling(model)


def _register_models(family: type, config_cls: type) -> None:
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

    wrapped: dict[type, type] = {}
    language_models = []
    for auto in (AutoModelForCausalLM, AutoModelForMaskedLM, AutoModel):
        model_cls = auto._model_mapping.get(family, None)
        if not isinstance(model_cls, type):
            continue  # not registered there (or several classes: not supported)
        if auto is AutoModel and model_cls not in language_models:
            continue  # a bare decoder (LlamaModel): the scheme is applied to full LMs only
        language_models.append(model_cls)
        if model_cls not in wrapped:
            wrapped[model_cls] = type(
                f"LNScaling{model_cls.__name__}",
                (_RestoresScheme, model_cls),
                {
                    "config_class": config_cls,
                    "__module__": __name__,
                    "_ln_scaling_family": model_cls,
                },
            )
        auto.register(config_cls, wrapped[model_cls], exist_ok=True)


class LNScalingConfig(PreTrainedConfig):
    """What `AutoConfig` gives for model type "ln_scaling": `from_dict` returns the config of the
    family named by `base_model_type` (importing its package when it is a layerwise one), of
    class `LNScaling<Family>Config`, with the recorded scheme."""

    model_type = MODEL_TYPE

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs: Any):
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING

        config_dict = dict(config_dict)
        base = config_dict.pop(BASE_MODEL_TYPE_KEY, None)
        config_dict.pop("model_type", None)
        import_model_packages({"model_type": base})
        if base not in CONFIG_MAPPING:
            raise ValueError(
                f"an ln_scaling config wraps model type {base!r}, which transformers does not know: "
                "install and import the package that defines it, or upgrade transformers"
            )
        return scheme_config_class(CONFIG_MAPPING[base]).from_dict(config_dict, **kwargs)


AutoConfig.register(MODEL_TYPE, LNScalingConfig, exist_ok=True)

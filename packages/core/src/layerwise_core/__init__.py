"""layerwise-core: the small shared core of the layerwise packages.

Model introspection (`find_decoder`), residual-stream capture (`capture_residual_stream`), the
papers' LLaMA presets, parameter groups, a strict pydantic config base with tagged choices
(`tagged_choice`) and `AdamWConfig`, atomic safetensors I/O, seeding and distributed helpers, token ids given as a tensor or a batch mapping (`token_inputs`)
and renamed arguments (`renamed_kwargs`), and `load_pretrained`: a saved model through the Auto
classes after importing the package its model type needs (`model_packages`). Tiny test models
live in `layerwise_core.tiny_models` (needs transformers) and dtype tolerances in
`layerwise_core.testing`.
"""

from layerwise_core.__about__ import __version__
from layerwise_core.adamw import AdamBetas, AdamWConfig
from layerwise_core.atomic_io import (
    CheckpointFileError,
    apply_umask,
    atomic_write,
    current_umask,
    load_safetensors,
    save_safetensors,
    torch_load_safe,
    torch_save_atomic,
)
from layerwise_core.config import (
    ConfigError,
    LayerwiseConfig,
    TaggedChoice,
    apply_overrides,
    parse_override,
    tagged_choice,
)
from layerwise_core.decoder_map import DecoderMap, DecoderSpec, LayerMap, find_decoder
from layerwise_core.deprecation import renamed_kwargs, warn_renamed
from layerwise_core.diffusion_masking import masked_copies
from layerwise_core.distributed import (
    all_reduce_max,
    all_reduce_sum,
    barrier,
    broadcast_object,
    full_tensor,
    get_rank,
    get_world_size,
    is_distributed,
    is_dtensor,
    is_main_process,
    local_part,
    local_tensor,
    rank_batch_starts,
)
from layerwise_core.errors import MissingPathError, PathExistsError, UsageError, error_line
from layerwise_core.heavy_tail import FITS, PowerLawFit, fit_power_law, hill_alpha, normalise_fit
from layerwise_core.model_packages import (
    BASE_MODEL_TYPE_KEY,
    MODEL_PACKAGES,
    ModelPackage,
    auto_model_class,
    import_model_packages,
    load_pretrained,
)
from layerwise_core.padding import pad_token_id, pad_token_rows
from layerwise_core.param_groups import (
    decay_param_groups,
    layer_param_groups,
    module_param_groups,
    pattern_param_groups,
)
from layerwise_core.presets import (
    LLAMA_PRESETS,
    LlamaPreset,
    check_config_fields,
    init_normal_,
    llama_config,
    llama_param_count,
)
from layerwise_core.residual_stream import ResidualStream, capture_residual_stream
from layerwise_core.run_folder import (
    RunFolderBusyError,
    RunFolderError,
    lock_run_folder,
    remove_temp_leftovers,
)
from layerwise_core.seeding import get_rng_state, seeded_torch_rng, set_rng_state, set_seed
from layerwise_core.token_inputs import TokenInputs, token_inputs
from layerwise_core.user_inputs import (
    check_tokenizer_fits,
    load_tokenizer_folder,
    read_json_lines,
    require_model_folder,
    vocabulary_size,
)


def __getattr__(name: str):
    # tiny test models need transformers (an extra): import them lazily
    import importlib

    tiny_models = importlib.import_module("layerwise_core.tiny_models")
    if name in tiny_models.__all__:
        return getattr(tiny_models, name)
    raise AttributeError(f"module 'layerwise_core' has no attribute {name!r}")


__all__ = [
    "BASE_MODEL_TYPE_KEY",
    "FITS",
    "LLAMA_PRESETS",
    "MODEL_PACKAGES",
    "AdamBetas",
    "AdamWConfig",
    "CheckpointFileError",
    "ConfigError",
    "DecoderMap",
    "DecoderSpec",
    "LayerMap",
    "LayerwiseConfig",
    "LlamaPreset",
    "MissingPathError",
    "ModelPackage",
    "PathExistsError",
    "PowerLawFit",
    "ResidualStream",
    "RunFolderBusyError",
    "RunFolderError",
    "TaggedChoice",
    "TokenInputs",
    "UsageError",
    "__version__",
    "all_reduce_max",
    "all_reduce_sum",
    "apply_overrides",
    "apply_umask",
    "atomic_write",
    "auto_model_class",
    "barrier",
    "broadcast_object",
    "capture_residual_stream",
    "check_config_fields",
    "check_tokenizer_fits",
    "current_umask",
    "decay_param_groups",
    "error_line",
    "find_decoder",
    "fit_power_law",
    "full_tensor",
    "get_rank",
    "get_rng_state",
    "get_world_size",
    "hill_alpha",
    "import_model_packages",
    "init_normal_",
    "is_distributed",
    "is_dtensor",
    "is_main_process",
    "layer_param_groups",
    "llama_config",
    "llama_param_count",
    "load_pretrained",
    "load_safetensors",
    "load_tokenizer_folder",
    "local_part",
    "local_tensor",
    "lock_run_folder",
    "masked_copies",
    "module_param_groups",
    "normalise_fit",
    "pad_token_id",
    "pad_token_rows",
    "parse_override",
    "pattern_param_groups",
    "rank_batch_starts",
    "read_json_lines",
    "remove_temp_leftovers",
    "renamed_kwargs",
    "require_model_folder",
    "save_safetensors",
    "seeded_torch_rng",
    "set_rng_state",
    "set_seed",
    "tagged_choice",
    "token_inputs",
    "torch_load_safe",
    "torch_save_atomic",
    "vocabulary_size",
    "warn_renamed",
]

"""Native transformers implementations of released masked diffusion LMs (LLaDA, Dream).

Importing this module (which `import dlm_decode` does) registers the checkpoints' own model types
with the Auto classes, so the released `GSAI-ML/LLaDA-*` and `Dream-org/Dream-*` folders load
without `trust_remote_code`:

    model = AutoModelForCausalLM.from_pretrained("GSAI-ML/LLaDA-8B-Instruct", dtype=torch.bfloat16)

The config classes keep the released names (`LLaDAConfig`, `DreamConfig`); at the top level of
`dlm_decode` those names are the samplers' configs, so the model configs are exported there as
`LLaDAModelConfig` and `DreamModelConfig`.
"""

from dlm_decode.models.dream import DreamBaseModel, DreamConfig, DreamModel
from dlm_decode.models.llada import LLaDAConfig, LLaDAModelLM

__all__ = ["DreamBaseModel", "DreamConfig", "DreamModel", "LLaDAConfig", "LLaDAModelLM"]

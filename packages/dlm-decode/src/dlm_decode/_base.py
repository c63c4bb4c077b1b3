"""Base classes of the decoding strategies: a pydantic config per method (the knobs and their
reference defaults) and the dataclass mixin that validates a strategy's fields through it.

A new strategy lives in its own module: a `_StrategyConfig` subclass with a `build()`, and a
`@dataclass` subclass of `_Validated` whose `config_class` is that config, with `step_budget`
and `run(canvas, generator)`; `strategies.py` registers it by name.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from layerwise_core import LayerwiseConfig

__all__ = ["_StrategyConfig", "_Validated"]


class _StrategyConfig(LayerwiseConfig):
    def _options(self, strategy: type) -> dict[str, Any]:
        """The constructor arguments of `strategy` that this config holds (not a subclass's tag)."""
        fields = [f.name for f in dataclasses.fields(strategy) if f.init]
        return {name: getattr(self, name) for name in fields if name in type(self).model_fields}


class _Validated:
    """A strategy checks its fields with its config: the same rules, in one place."""

    config_class: ClassVar[type[_StrategyConfig]]

    def __post_init__(self) -> None:
        config = self.config_class
        config.from_dict({name: getattr(self, name) for name in config.model_fields})

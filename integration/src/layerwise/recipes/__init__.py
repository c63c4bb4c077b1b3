"""Paper-scale pre-training recipes: one `PretrainConfig` YAML per paper's main setting.

    list_recipes()                                   # ['alphadecay-135m', ..., 'stable-spam-int4-350m']
    cfg = load_recipe("lns-130m", ["train.steps=100"])
    layerwise pretrain --config lns-130m train.steps=100   # a recipe name where a file is expected

Each file in `recipes/pretrain/` states its paper, the table its hyper-parameters come from, the
paper's number to compare with, and a comment with the source of every value the spec lacks.
docs/recipes.md lists them. `recipes/quickstart.yaml` is the quickstart's own recipe (another
config class) and is not listed here.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from layerwise_core import MissingPathError

if TYPE_CHECKING:
    from layerwise.train.config import PretrainConfig

__all__ = ["RECIPE_DIR", "list_recipes", "load_recipe", "recipe_path", "resolve_config"]

RECIPE_DIR = Path(__file__).parent / "pretrain"


def list_recipes() -> list[str]:
    """Names of the packaged pre-training recipes, sorted (file names without `.yaml`)."""
    return sorted(path.stem for path in RECIPE_DIR.glob("*.yaml"))


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, list_recipes(), n=1)
    return f" (did you mean the recipe '{close[0]}'?)" if close else ""


def recipe_path(name: str) -> Path:
    """The YAML file of recipe `name`; an unknown name is a `MissingPathError` (a `UsageError`)
    naming the closest recipe and the others."""
    path = RECIPE_DIR / f"{name}.yaml"
    if path.is_file():
        return path
    raise MissingPathError(
        f"unknown recipe '{name}'{_did_you_mean(name)}: choose one of {list_recipes()}"
    )


def load_recipe(name: str, overrides: Sequence[str] = ()) -> PretrainConfig:
    """Recipe `name` as a validated `PretrainConfig`, with dotted `key=value` overrides applied
    (`["train.steps=5", "optimizer.lr=3e-4"]`), exactly as `PretrainConfig.from_yaml` does."""
    from layerwise.train.config import PretrainConfig

    return PretrainConfig.from_yaml(recipe_path(name), overrides=list(overrides))


def resolve_config(spec: str) -> Path:
    """What `--config SPEC` means: an existing file is itself; otherwise SPEC names a packaged
    recipe (`lns-130m`, or `recipe:lns-130m`). Neither is a `MissingPathError` naming both."""
    path = Path(spec).expanduser()
    if path.is_file():
        return path
    name = spec.removeprefix("recipe:")
    if (RECIPE_DIR / f"{name}.yaml").is_file():
        return RECIPE_DIR / f"{name}.yaml"
    raise MissingPathError(
        f"--config '{spec}' is neither a file nor a packaged recipe{_did_you_mean(name)}: pass a "
        "YAML file or one of layerwise.recipes.list_recipes()"
    )

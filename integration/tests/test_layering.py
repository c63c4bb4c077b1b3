"""The integration's import layering (docs/architecture.md): data -> models -> eval -> train -> cli.

Every `import layerwise...` of every module (at module level or inside a function) is read with
`ast`; no module imports a module of a higher layer, and the import graph has no cycle. The
command modules (`layerwise.commands`) import at module level only, except optional dependencies;
`cli.py` imports only the standard library and `layerwise.__about__`, and imports a command module
through `importlib` in one function.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "layerwise"

# lowest first; a module may import its own layer and the layers below it
LAYERS = [
    ("base", ("layerwise.__about__", "layerwise._progress", "layerwise.legacy_layout")),
    ("data", ("layerwise.data",)),
    ("models", ("layerwise.models",)),
    ("eval", ("layerwise.eval",)),
    ("train", ("layerwise.train", "layerwise.finetune")),
    ("studies", ("layerwise.studies",)),
    (
        "cli",
        (
            "layerwise.quickstart",
            "layerwise.recipes",
            "layerwise.commands",
            "layerwise.cli",
            "layerwise.__main__",
            "layerwise",
        ),
    ),
]
OPTIONAL_DEPENDENCIES = {"peft", "tensorboard", "torch.utils.tensorboard"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(module: str) -> int:
    """Index in LAYERS of the longest prefix that names `module` or a package above it."""
    best, best_length = None, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best_length:
                best, best_length = index, len(prefix)
    assert best is not None, f"{module} is in no layer: add it to LAYERS"
    return best


def imported_modules(path: Path) -> list[tuple[str, int, bool]]:
    """(layerwise module imported, line, at module level) for every import in `path`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    top_level = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from layerwise.train import pretrain` imports the module train.pretrain
            names = [
                f"{node.module}.{alias.name}"
                if f"{node.module}.{alias.name}" in MODULES
                else node.module
                for alias in node.names
            ]
        for name in names:
            if name == "layerwise" or name.startswith("layerwise."):
                while name not in MODULES:  # `import layerwise.train.checkpoint as ckpt` et al.
                    name = name.rsplit(".", 1)[0]
                found.append((name, node.lineno, id(node) in top_level))
    return found


def test_every_module_is_in_a_layer_and_the_layers_are_ordered():
    assert {"layerwise.models", "layerwise.train", "layerwise.eval", "layerwise.cli"} <= set(
        MODULES
    )
    for module in MODULES:
        layer_of(module)
    assert layer_of("layerwise.models.saved") < layer_of("layerwise.eval.depth")
    assert layer_of("layerwise.eval.decode") < layer_of("layerwise.train.pretrain")


def test_no_module_imports_a_higher_layer():
    wrong = []
    for module, path in MODULES.items():
        for target, line, _ in imported_modules(path):
            if layer_of(target) > layer_of(module):
                wrong.append(
                    f"{path.relative_to(SRC)}:{line}: {module} ({LAYERS[layer_of(module)][0]}) "
                    f"imports {target} ({LAYERS[layer_of(target)][0]})"
                )
    assert not wrong, "\n".join(wrong)


def test_the_import_graph_has_no_cycle():
    graph = {m: {t for t, _, _ in imported_modules(p) if t != m} for m, p in MODULES.items()}
    done: set[str] = set()

    def visit(module: str, stack: list[str]) -> None:
        if module in stack:
            cycle = [*stack[stack.index(module) :], module]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        for target in sorted(graph.get(module, ())):
            visit(target, [*stack, module])
        done.add(module)

    for module in sorted(graph):
        visit(module, [])


def test_the_layering_test_sees_a_violation(tmp_path):
    """The reader above finds function-level imports and resolves `from package import module`."""
    source = tmp_path / "probe.py"
    source.write_text(
        "from layerwise.train import pretrain\n"
        "def f():\n"
        "    from layerwise.models import build_model\n"
        "    import layerwise.train.checkpoint as ckpt\n"
    )
    assert imported_modules(source) == [
        ("layerwise.train.pretrain", 1, True),
        ("layerwise.models", 3, False),
        ("layerwise.train.checkpoint", 4, False),
    ]
    assert layer_of("layerwise.train.pretrain") > layer_of("layerwise.eval.perplexity")


def function_level_imports(path: Path) -> list[tuple[str, int]]:
    """(module, line) of every import inside a function or class of `path`."""
    tree = ast.parse(path.read_text())
    top_level = {id(node) for node in tree.body}
    late = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top_level:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
            late += [(n, node.lineno) for n in names]
    return late


def test_the_command_modules_import_at_module_level_except_optional_dependencies():
    commands = sorted((PACKAGE / "commands").glob("*.py"))
    assert {"pretrain.py", "finetune.py", "probe.py"} <= {p.name for p in commands}
    late = [
        (path.name, *found)
        for path in [PACKAGE / "cli.py", *commands]
        for found in function_level_imports(path)
        if found[0] not in OPTIONAL_DEPENDENCIES
    ]
    assert not late, f"function-level imports: {late}"


def test_the_cli_imports_the_command_modules_through_one_resolver():
    """`layerwise --help` stays fast: cli.py imports only the standard library and
    layerwise.__about__, and calls importlib.import_module in one function; every subcommand of
    its table names a command module in the top layer."""
    from layerwise.cli import COMMANDS_PACKAGE, SUBCOMMANDS

    tree = ast.parse((PACKAGE / "cli.py").read_text())
    imported = [
        name
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for name in (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
        )
    ]
    heavy = [
        n
        for n in imported
        if n.split(".")[0] not in sys.stdlib_module_names and n != "layerwise.__about__"
    ]
    assert not heavy, f"cli.py imports {heavy} at module level: name them in a command module"
    callers = {
        function.name
        for function in ast.walk(tree)
        if isinstance(function, ast.FunctionDef)
        for node in ast.walk(function)
        if isinstance(node, ast.Attribute) and node.attr == "import_module"
    }
    assert callers == {"_import"}
    for module in [COMMANDS_PACKAGE, *(command.module for command in SUBCOMMANDS)]:
        assert module in MODULES and LAYERS[layer_of(module)][0] == "cli", module

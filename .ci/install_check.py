"""Each distribution installs alone from the wheelhouse, imports lean, and runs its README.

    nox -s install_check                        CI: every distribution (nox -s build runs first)
    nox -s install_check -- spam-opt meap       only these
    nox -s install_check -- --bench             + import-time medians, written to docs/benchmarks.md

For each distribution, in a fresh virtual environment:
1. `pip install --find-links dist <dist>`: its workspace dependencies must come from the wheelhouse
   (pip's install report names the file of each), exactly the ones it declares, nothing editable.
2. `import <module>` from an empty folder: the module is the installed one, and it does not import
   what it does not use. Two rules, on the tree that `python -X importtime` prints:
   - a module of the workspace imports only distributions its own pyproject declares (not an
     extra, not a sibling method package, not a package that torch happens to bring along);
   - after the import, none of HEAVY (transformers, triton, peft, matplotlib, datasets,
     accelerate, ...) is in `sys.modules`, unless AT_IMPORT lists it for that distribution with
     the reason.
3. Its README's ```python blocks run as written (`<!-- not-run: ... -->` blocks are skipped, as in
   integration/tests/test_readme_blocks.py), with the extras of README_EXTRAS installed first.
Then the installed size (what pip added, without bytecode) and the import time are printed.

Finally, in the environment of `layerwise` (every distribution) with the optional extras added
(triton, peft, matplotlib), rule 2 again for every module: extras installed must stay unimported.
And the README's "from a clone" command (`pip install ./packages/core ./kernels ./packages/...`)
must name exactly the distribution's workspace dependencies; the one of LOCAL_FORM is run.

Speed: one base environment holds torch==2.13.0 (constraints.txt); each per-distribution
environment is created without pip and sees the base's site-packages through a `.pth` file, so torch
is installed once (venv's --system-site-packages would expose the interpreter's packages, not the
base venv's). The per-distribution environment still holds only the distribution and what pip
added for it; the base adds torch and its own dependencies, which every distribution needs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DIST = ROOT / "dist"
CONSTRAINTS = ROOT / "constraints.txt"
BENCHMARKS = ROOT / "docs" / "benchmarks.md"
TORCH = "torch==2.13.0"

# Imported by nobody at `import <module>` time unless AT_IMPORT says why: each costs seconds of
# import or is an optional extra.
HEAVY = frozenset(
    {
        "accelerate",
        "datasets",
        "lm_eval",
        "matplotlib",
        "pandas",
        "peft",
        "pyarrow",
        "scipy",
        "sklearn",
        "tensorboard",
        "tokenizers",
        "transformers",
        "triton",
    }
)
# distribution -> {heavy module: why importing the distribution imports it}
# (what an allowed package imports itself is allowed too: transformers -> tokenizers, accelerate)
AT_IMPORT: dict[str, dict[str, str]] = {
    "coe-moe": {"transformers": "CoEConfig / CoEForCausalLM: HF classes registered at import"},
    "dlm-decode": {
        "transformers": "native LLaDA / Dream model types registered with the Auto classes at "
        "import, so released checkpoints load without trust_remote_code"
    },
    "ln-scaling": {
        "transformers": "LNS / Mix-LN model types registered with the Auto classes at import, so "
        "a saved checkpoint loads with its scheme"
    },
    "sparse-ft": {
        "transformers": "ELAS model type elas_llama registered with the Auto classes at import, "
        "so a saved ELAS checkpoint loads with its low-rank / 2:4 blocks"
    },
}
# distribution -> extras its README's python blocks need (its Install section says so)
README_EXTRAS: dict[str, list[str]] = {
    "layerwise-core": ["hf"],  # tiny_llama builds a transformers LlamaForCausalLM
    "spectral-opt": ["hf"],  # its example schedules with transformers' cosine warm-up
}
# extras added to the all-distributions environment for the last hygiene pass
ALL_EXTRAS = (
    "layerwise-kernels[triton]",
    "sparse-ft[peft]",
    "depth-probe[plot]",
    "spectral-opt[plot]",
)
LOCAL_FORM = "spam-opt"  # the distribution whose README "from a clone" command is run as written
TORCH_HINT = re.compile(r"any torch>=([\d.]+)")
LOCAL_LINE = re.compile(r"^pip install (\./\S+(?: \./\S+)*)\s*$", re.M)
BLOCK_TIMEOUT_S = 300


@dataclass
class Dist:
    name: str
    folder: Path
    module: str
    requires: list[str]  # names of the non-extra requirements
    workspace: list[str] = field(default_factory=list)  # workspace closure, dependencies first


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _req_name(req: str) -> str:
    return _norm(re.split(r"[\s\[<>=!~;(]", req.strip(), maxsplit=1)[0])


def discover() -> dict[str, Dist]:
    pyprojects = [*ROOT.glob("packages/*/pyproject.toml")]
    pyprojects += [ROOT / "kernels" / "pyproject.toml", ROOT / "integration" / "pyproject.toml"]
    dists: dict[str, Dist] = {}
    for path in sorted(pyprojects):
        data = tomllib.loads(path.read_text())
        project = data["project"]
        [package] = data["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
        dists[project["name"]] = Dist(
            project["name"],
            path.parent,
            Path(package).name,
            [_req_name(r) for r in project.get("dependencies", [])],
        )

    def closure(name: str) -> list[str]:
        out: list[str] = []
        for dep in dists[name].requires:
            if dep in dists:
                for sub in [*closure(dep), dep]:
                    if sub not in out:
                        out.append(sub)
        return out

    for dist in dists.values():
        dist.workspace = closure(dist.name)
    order = sorted(dists, key=lambda n: (len(dists[n].workspace), n))  # core, kernels first
    return {n: dists[n] for n in order}


# --- environments ---------------------------------------------------------------------------


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.pop("VIRTUAL_ENV", None)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        CUDA_VISIBLE_DEVICES="",
        MPLBACKEND="Agg",
        PIP_DISABLE_PIP_VERSION_CHECK="1",
    )
    env.update(extra)
    return env


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("env", _clean_env())
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def _check(result: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if "is ignored" not in line]
        raise SystemExit(f"{what} failed (exit {result.returncode}):\n" + "\n".join(lines[-40:]))
    return result


def _site_packages(venv: Path) -> Path:
    [site] = (venv / "lib").glob("python3*/site-packages")
    return site


def base_venv(work: Path) -> Path:
    """The environment with torch only, made once per work folder."""
    base = work / "base"
    python = base / "bin" / "python"
    probe = "import torch, sys; sys.exit(torch.__version__.split('+')[0] != '2.13.0')"
    if python.exists() and _run([str(python), "-c", probe]).returncode == 0:
        return base
    shutil.rmtree(base, ignore_errors=True)
    _check(_run([sys.executable, "-m", "venv", str(base)]), "creating the base venv")
    pip = [str(python), "-m", "pip", "install", "-q", "-c", str(CONSTRAINTS), TORCH]
    _check(_run(pip), f"pip install {TORCH} into the base venv")
    return base


def child_venv(base: Path, path: Path) -> Path:
    """A venv without pip that sees the base's site-packages (torch, pip) after its own."""
    shutil.rmtree(path, ignore_errors=True)
    _check(_run([sys.executable, "-m", "venv", "--without-pip", str(path)]), f"venv {path}")
    (_site_packages(path) / "_layerwise_base.pth").write_text(f"{_site_packages(base)}\n")
    return path


def pip_install(venv: Path, *reqs: str, report: Path | None = None) -> None:
    cmd = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile"]
    cmd += ["--find-links", str(DIST), "-c", str(CONSTRAINTS)]
    if report is not None:
        cmd += ["--report", str(report)]
    _check(_run([*cmd, *reqs], cwd=tempfile.gettempdir()), f"pip install {' '.join(reqs)}")


def installed_size_mb(venv: Path) -> float:
    total = 0
    for root, dirs, files in os.walk(_site_packages(venv)):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        total += sum((Path(root) / f).stat().st_size for f in files)
    return total / 2**20


# --- the checks -----------------------------------------------------------------------------


def check_install_report(dist: Dist, dists: dict[str, Dist], report: Path) -> list[str]:
    """Workspace distributions came from the wheelhouse, and exactly the declared ones."""
    problems = []
    wanted = {dist.name, *dist.workspace}
    got = set()
    for item in json.loads(report.read_text())["install"]:
        name = _norm(item["metadata"]["name"])
        url = item["download_info"]["url"]
        if name in dists:
            got.add(name)
            if not url.startswith(DIST.as_uri() + "/") or not url.endswith(".whl"):
                problems.append(f"{name} was installed from {url}, not from a wheel in {DIST}")
            if item.get("is_direct") or "dir_info" in item["download_info"]:
                problems.append(f"{name} was installed as a direct/editable requirement")
    if got != wanted:
        problems.append(
            f"workspace distributions installed: {sorted(got)}; declared: {sorted(wanted)}"
        )
    return problems


_METADATA = r"""
import importlib.metadata as md, json, re, sys
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
out = {"requires": {}, "owner": {}, "stdlib": sorted(sys.stdlib_module_names)}
for d in md.distributions():
    reqs = [r for r in d.requires or [] if ";" not in r or "extra" not in r.split(";", 1)[1]]
    out["requires"][norm(d.metadata["Name"])] = [
        norm(re.split(r"[\s\[<>=!~;(]", r.strip(), maxsplit=1)[0]) for r in reqs]
for module, names in md.packages_distributions().items():
    out["owner"][module] = norm(names[0])
print(json.dumps(out))
"""


Tree = list[tuple[str, int, tuple[str, ...]]]


def import_tree(python: Path, module: str) -> tuple[Tree, str, float]:
    """`python -X importtime -c "import module"` in a fresh process from an empty folder:
    (name, cumulative us, chain of importers) for each module (first imports only, every
    importer before the modules it imports), the module's __file__ and the process's wall time."""
    with tempfile.TemporaryDirectory() as cwd:
        code = f"import {module}; print({module}.__file__)"
        start = time.perf_counter()
        result = _run([str(python), "-X", "importtime", "-c", code], cwd=cwd)
        wall = time.perf_counter() - start
        _check(result, f"import {module}")
    rows = []
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        _, cumulative, name = line[len("import time:") :].split("|", 2)
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        rows.append((name.strip(), int(cumulative), depth))
    # importtime prints children before their parent: reversed, every parent precedes its children
    out, stack = [], []
    for name, cumulative, depth in reversed(rows):
        del stack[depth:]
        out.append((name, cumulative, tuple(stack)))
        stack.append(name)
    return out, result.stdout.strip(), wall


def _path(chain: tuple[str, ...], name: str) -> str:
    """The import chain from the root module, shortened in the middle: `a -> b -> ... -> name`."""
    path = [*chain, name]
    return " -> ".join(path if len(path) <= 6 else [*path[:4], "...", *path[-2:]])


def hygiene(dist: Dist, dists: dict[str, Dist], tree: Tree, meta: dict) -> list[str]:
    """Problems of rule 2 (see the module docstring) for one `import dist.module`."""
    modules = {d.module: d.name for d in dists.values()}
    stdlib = set(meta["stdlib"]) | {"__future__"}
    problems = []
    seen_heavy: set[str] = set()
    for name, _, chain in tree:
        top = name.split(".")[0]
        if top in stdlib or (top.startswith("_") and top[1:] in stdlib):
            continue
        if top in HEAVY and top not in seen_heavy:
            seen_heavy.add(top)
            allowed = AT_IMPORT.get(dist.name, {})
            # what an allowed package imports on its own (transformers -> tokenizers) is its choice
            via = [m for m in chain if m.split(".")[0] in allowed and m.split(".")[0] != top]
            if top not in allowed and not via:
                problems.append(f"`import {dist.module}` imports {top} ({_path(chain, name)})")
        if not chain or "." in name:
            # submodules are often loaded by a lazy module's __getattr__ (transformers,
            # huggingface_hub) and then nest under whoever touched the attribute: judge
            # first imports of top-level packages only
            continue
        importer = chain[-1].split(".")[0]
        if importer == top or importer not in modules:
            continue  # within one package, or a third-party package's own business
        owner = modules.get(top) or meta["owner"].get(top)
        if owner is None:
            continue  # not installed: a guarded optional import that failed (the import worked)
        declared = meta["requires"].get(modules[importer], [])
        if owner != modules[importer] and owner not in declared:
            problems.append(
                f"{chain[-1]} imports {name}, which {modules[importer]} does not declare"
                f" (distribution {owner}): declare it or import it lazily"
            )
    return problems


def readme_blocks(core_python: Path, readme: Path) -> list[tuple[int, str]]:
    """The runnable python blocks of a README (core's markdown_python_blocks, not_run_reason)."""
    code = (
        "import json, sys\n"
        "from layerwise_core.testing import markdown_python_blocks, not_run_reason\n"
        "lines = open(sys.argv[1], encoding='utf-8').read().splitlines()\n"
        "blocks = markdown_python_blocks(sys.argv[1])\n"
        "print(json.dumps([b for b in blocks if not_run_reason(lines, b[0]) is None]))"
    )
    blocks = json.loads(_check(_run([str(core_python), "-c", code, str(readme)]), "blocks").stdout)
    return [(line, body) for line, body in blocks]


def run_block(python: Path, readme: Path, line: int, body: str) -> str | None:
    with tempfile.TemporaryDirectory() as cwd:
        script = Path(cwd) / "block.py"
        script.write_text(body, encoding="utf-8")
        env = _clean_env(TRITON_INTERPRET="1")
        try:
            result = _run([str(python), str(script)], cwd=cwd, env=env, timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return f"{readme.relative_to(ROOT)}:{line} ran past {BLOCK_TIMEOUT_S} s"
    if result.returncode != 0:
        return f"{readme.relative_to(ROOT)}:{line} failed:\n{result.stderr[-2000:]}"
    return None


def check_torch_hint(dist: Dist) -> list[str]:
    """The README's "any torch>=X you already have" agrees with the pyproject's torch bound."""
    readme = dist.folder / "README.md"
    hint = TORCH_HINT.search(readme.read_text(encoding="utf-8"))
    project = tomllib.loads((dist.folder / "pyproject.toml").read_text())["project"]
    spec = next((r for r in project.get("dependencies", []) if _req_name(r) == "torch"), "")
    lower = re.search(r">=\s*([\d.]+)", spec)
    if hint and lower and hint.group(1) != lower.group(1):
        return [
            f"{readme.relative_to(ROOT)}: its Install section says torch>={hint.group(1)},"
            f" the pyproject requires {spec!r}"
        ]
    return []


def check_local_form(dist: Dist, dists: dict[str, Dist]) -> list[str]:
    """The README's `pip install ./...` line names exactly the workspace closure + itself."""
    readme = dist.folder / "README.md"
    match = LOCAL_LINE.search(readme.read_text(encoding="utf-8"))
    if match is None:
        return [f"{readme.relative_to(ROOT)}: no `pip install ./...` line in its Install section"]
    folders = []
    for arg in match.group(1).split():
        folders += sorted(ROOT.glob(arg[2:])) if "*" in arg else [ROOT / arg[2:]]
    named = {name for name, d in dists.items() if d.folder in {f.resolve() for f in folders}}
    if named != {dist.name, *dist.workspace}:
        return [
            f"{readme.relative_to(ROOT)}: `{match.group(0).strip()}` installs {sorted(named)};"
            f" the distribution needs {sorted({dist.name, *dist.workspace})}"
        ]
    return []


def own_seconds(tree: Tree, module: str) -> float:
    """The module's cumulative import time minus torch's (when torch is imported under it)."""
    own = next(us for name, us, chain in tree if name == module and not chain)
    own -= next((us for name, us, chain in tree if name == "torch" and chain), 0)
    return own / 1e6


def slowest(tree: Tree, module: str) -> dict[str, float]:
    """Cumulative seconds of each top-level package the import pulls in, torch's share removed."""
    torch_us, torch_chain = next(((us, c) for n, us, c in tree if n == "torch"), (0, ()))
    out = {}
    for name, us, chain in tree:
        if "." in name or name in (module, "torch") or any(m.startswith("torch") for m in chain):
            continue  # a submodule, the module itself, torch, or what torch imports
        out[name] = (us - (torch_us if name in torch_chain else 0)) / 1e6
    return out


def bench_imports(
    targets: dict[str, tuple[Path, str]], repeats: int
) -> dict[str, tuple[float, float, dict[str, float]]]:
    """For each target (python, module): median wall time of a fresh `import`, median own time
    and median per-package times. Round robin over the targets, after one warm-up round, so a
    change of load on a shared machine shifts every target alike."""
    samples: dict[str, list[tuple[float, Tree]]] = {key: [] for key in targets}
    for round_ in range(repeats + 1):
        for key, (python, module) in targets.items():
            tree, _, wall = import_tree(python, module)
            if round_:
                samples[key].append((wall, tree))
    out = {}
    for key, runs in samples.items():
        module = targets[key][1]
        per_package: dict[str, list[float]] = {}
        for _, tree in runs:
            for name, seconds in slowest(tree, module).items():
                per_package.setdefault(name, []).append(seconds)
        out[key] = (
            statistics.median(wall for wall, _ in runs),
            statistics.median(own_seconds(tree, module) for _, tree in runs),
            {name: statistics.median(v) for name, v in per_package.items()},
        )
    return out


# --- driver ---------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("dists", nargs="*", help="distribution names (default: all)")
    parser.add_argument("--bench", action="store_true", help="import-time medians -> docs")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--work", type=Path, default=ROOT / ".nox" / "install_check-work")
    args = parser.parse_args()

    dists = discover()
    unknown = sorted(set(args.dists) - set(dists))
    if unknown:
        raise SystemExit(f"unknown distributions {unknown}; choose from {sorted(dists)}")
    chosen = args.dists or list(dists)
    missing = [n for n in chosen if not list(DIST.glob(n.replace("-", "_") + "-*.whl"))]
    if missing:
        raise SystemExit(f"no wheel of {missing} in {DIST}: run `nox -s build` first")

    start = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    base = base_venv(args.work)
    print(f"base venv with {TORCH}: {time.perf_counter() - start:.0f} s", flush=True)
    problems: list[str] = []
    rows = []
    core_python = None
    for name in chosen:
        dist = dists[name]
        t0 = time.perf_counter()
        venv = child_venv(base, args.work / "venvs" / name)
        python = venv / "bin" / "python"
        report = args.work / f"{name}.report.json"
        pip_install(venv, name, report=report)
        t_install = time.perf_counter() - t0
        found = check_install_report(dist, dists, report)
        size = installed_size_mb(venv)
        meta = json.loads(_check(_run([str(python), "-c", _METADATA]), "metadata").stdout)
        tree, file, _ = import_tree(python, dist.module)
        if not file.startswith(str(_site_packages(venv))):
            found.append(f"`import {dist.module}` found {file}, not the installed wheel")
        found += hygiene(dist, dists, tree, meta)
        found += check_local_form(dist, dists) + check_torch_hint(dist)
        own = own_seconds(tree, dist.module)
        t_blocks = time.perf_counter()
        if README_EXTRAS.get(name):
            pip_install(venv, f"{name}[{','.join(README_EXTRAS[name])}]")
        if name == "layerwise-core":
            core_python = python
        elif core_python is None and "layerwise-core" not in dist.workspace:
            core_python = child_venv(base, args.work / "venvs" / "core-for-readme") / "bin/python"
            pip_install(core_python.parents[1], "layerwise-core")
        blocks = readme_blocks(core_python or python, dist.folder / "README.md")
        if not blocks:
            found.append(f"{dist.folder.relative_to(ROOT)}/README.md has no runnable python block")
        for line, body in blocks:
            failure = run_block(python, dist.folder / "README.md", line, body)
            if failure:
                found.append(failure)
        row = {
            "name": name,
            "size": size,
            "python": python,
            "module": dist.module,
            "blocks": len(blocks),
            "seconds": time.perf_counter() - t0,
            "install_s": t_install,
            "readme_s": time.perf_counter() - t_blocks,
        }
        rows.append(row)
        problems += [f"{name}: {p}" for p in found]
        status = "ok" if not found else f"{len(found)} problem(s)"
        print(
            f"{name:18s} {size:7.1f} MB  import {own:5.2f} s  "
            f"{len(blocks)} README block(s)  {row['seconds']:4.0f} s (pip {t_install:.0f} s, "
            f"README {row['readme_s']:.0f} s)  {status}",
            flush=True,
        )
        for p in found:
            print(f"    {p}", flush=True)

    if "layerwise" in chosen:
        t0 = time.perf_counter()
        venv = args.work / "venvs" / "layerwise"
        python = venv / "bin" / "python"
        pip_install(venv, *ALL_EXTRAS)
        meta = json.loads(_check(_run([str(python), "-c", _METADATA]), "metadata").stdout)
        found = []
        for dist in dists.values():
            tree, _, _ = import_tree(python, dist.module)
            found += [
                f"{dist.name} (all extras installed): {p}" for p in hygiene(dist, dists, tree, meta)
            ]
        problems += found
        print(
            f"all distributions + {', '.join(ALL_EXTRAS)}: {len(found)} problem(s), "
            f"{time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        for p in found:
            print(f"    {p}", flush=True)

    if LOCAL_FORM in chosen:
        t0 = time.perf_counter()
        dist = dists[LOCAL_FORM]
        venv = child_venv(base, args.work / "venvs" / "local-form")
        line = LOCAL_LINE.search((dist.folder / "README.md").read_text()).group(1).split()
        cmd = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-compile", *line]
        result = _run(cmd, cwd=ROOT)
        if result.returncode != 0:
            problems.append(f"{LOCAL_FORM}: README's `pip install {' '.join(line)}` failed")
        else:
            tree, file, _ = import_tree(venv / "bin" / "python", dist.module)
            if not file.startswith(str(_site_packages(venv))):
                problems.append(f"{LOCAL_FORM}: the local-form install imports {file}")
        print(
            f"README `pip install {' '.join(line)}` (from the clone): "
            f"{'ok' if result.returncode == 0 else 'FAILED'}, {time.perf_counter() - t0:.0f} s"
        )

    total = time.perf_counter() - start
    print(
        f"install check: {len(chosen)} distribution(s), {len(problems)} problem(s), {total:.0f} s"
    )
    if args.bench:
        targets = {r["name"]: (r["python"], r["module"]) for r in rows}
        targets["torch"] = (base / "bin" / "python", "torch")
        load = os.getloadavg()[0]
        timings = bench_imports(targets, args.repeats)
        load = f"{load:.1f} before, {os.getloadavg()[0]:.1f} after the timing"
        write_benchmarks(rows, timings, total, args.repeats, load)
    return 1 if problems else 0


def write_benchmarks(
    rows: list[dict], timings: dict, total: float, repeats: int, load: str
) -> None:
    torch_s = timings["torch"][0]
    cpu = "unknown CPU"
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    date = datetime.date.today().isoformat()
    head = f"## Install size and import time of each distribution alone (CPU, {date})"
    lines = [
        head,
        "",
        f"Machine: {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {TORCH} "
        f"(CPU build), load average {load}. Command: `nox -s install_check -- --bench`"
        " (runs `nox -s build` first).",
        "Each distribution is installed alone (`pip install --find-links dist <dist>`) into a venv",
        "that sees a torch-only base. *Size*: what pip added beyond torch (MB, without bytecode).",
        f'*Import*: median wall time of {repeats} fresh `python -X importtime -c "import <module>"`',
        "processes, torch included, taken round robin over all distributions after a warm-up round;",
        f"`import torch` alone: {torch_s:.2f} s. *Own*: the module's cumulative `-X importtime` minus",
        "torch's (median). *Slowest imports*: the packages it pulls in besides torch and what torch",
        "imports, median cumulative seconds (nested: transformers includes tokenizers).",
        "",
        "| distribution | size (MB) | import (s) | own (s) | slowest imports (s) |",
        "|---|---:|---:|---:|---|",
    ]
    for r in rows:
        wall, own, packages = timings[r["name"]]
        top = sorted(((s, n) for n, s in packages.items() if s >= 0.02), reverse=True)[:3]
        names = ", ".join(f"{n} {s:.2f}" for s, n in top) or "-"
        lines.append(f"| `{r['name']}` | {r['size']:.1f} | {wall:.2f} | {own:.2f} | {names} |")
    lines += [
        "",
        f"The whole check took {total:.0f} s here (CI runs it without the timing repeats).",
        "",
    ]
    text = BENCHMARKS.read_text(encoding="utf-8")
    section = "\n".join(lines)
    pattern = re.compile(r"^## Install size and import time.*?(?=^## |\Z)", re.M | re.S)
    text = (
        pattern.sub(section + "\n", text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + section
    )
    BENCHMARKS.write_text(text, encoding="utf-8")
    print(f"wrote {BENCHMARKS.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.exit(main())

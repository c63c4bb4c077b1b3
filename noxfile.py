"""Every development task of the layerwise monorepo is a nox session.

    nox -s tests                          all distributions editable in one venv, every test suite
    nox -s "tests_pkg(package='meap')"    build one wheel, install it alone, run its tests
    nox -s "compat(end='newest')"         the newest versions pip resolves (also end='oldest')
    nox -s lint | build | install_check | quickstart | bench | slow | gpu
    nox -s reference_dlm | reference_neurotrails   against the official code (local checkouts; not CI)

Virtual environments are plain `venv` + pip (never uv: it ignores the local CPU torch wheel and
downloads a CUDA build). torch is installed first, pinned by constraints.txt.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import nox
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - nox itself may run on 3.10
    import tomli as tomllib

nox.options.default_venv_backend = "venv"
nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
CONSTRAINTS = ("-c", str(ROOT / "constraints.txt"))
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
# Pure-torch layers first, so that a distribution's workspace dependencies are built before it.
DIST_ORDER = ("layerwise-core", "layerwise-kernels")


def _discover() -> dict[str, Path]:
    """Map distribution name -> folder, found by their pyproject files (ARCHITECTURE.md layout)."""
    found: dict[str, Path] = {}
    for pyproject in sorted(
        [
            *ROOT.glob("packages/*/pyproject.toml"),
            ROOT / "kernels" / "pyproject.toml",
            ROOT / "integration" / "pyproject.toml",
        ]
    ):
        if pyproject.is_file():
            name = tomllib.loads(pyproject.read_text())["project"]["name"]
            found[name] = pyproject.parent
    head = [n for n in DIST_ORDER if n in found]
    return {n: found[n] for n in head + sorted(set(found) - set(head))}


DISTS = _discover()


def _workspace_deps(name: str) -> list[str]:
    """Workspace distributions that `name` needs, transitively (declared + test extra)."""
    project = tomllib.loads((DISTS[name] / "pyproject.toml").read_text())["project"]
    reqs = list(project.get("dependencies", []))
    reqs += project.get("optional-dependencies", {}).get("test", [])
    out: list[str] = []
    for req in reqs:
        dep = req.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip()
        if dep in DISTS and dep != name:
            for sub in [*_workspace_deps(dep), dep]:
                if sub not in out:
                    out.append(sub)
    return out


def _install_torch(session: nox.Session, *extra: str) -> None:
    session.install(*CONSTRAINTS, "pip>=23", "torch==2.13.0", *extra)


def _interpreter_env() -> dict[str, str]:
    # Triton kernels run on CPU tensors under the interpreter when there is no GPU.
    return {**OFFLINE_ENV, "TRITON_INTERPRET": "1"}


def _extra_requirements(extra: str) -> list[str]:
    """Requirements of one optional extra across all distributions, minus workspace ones."""
    reqs: list[str] = []
    for path in DISTS.values():
        project = tomllib.loads((path / "pyproject.toml").read_text())["project"]
        for req in project.get("optional-dependencies", {}).get(extra, []):
            name = req.split(";")[0].split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip()
            if name not in DISTS and req not in reqs:
                reqs.append(req)
    return reqs


def _install_all_editable(session: nox.Session, extras: str = "test") -> None:
    _install_torch(session)
    # Editables without extras in one resolve (pip does not let `-e dir[extra]` satisfy a plain
    # dependency on that distribution), then the extras' own requirements.
    args: list[str] = []
    for path in DISTS.values():
        args += ["-e", str(path)]
    session.install(*CONSTRAINTS, *args)
    extra = _extra_requirements(extras)
    if extra:
        session.install(*CONSTRAINTS, *extra)


def _test_paths() -> list[str]:
    return [str(p / "tests") for p in DISTS.values() if (p / "tests").is_dir()]


@nox.session
def tests(session: nox.Session) -> None:
    """All distributions installed editable in one venv; every test suite, cross-package tests too."""
    _install_all_editable(session)
    session.run(
        "pytest",
        *_test_paths(),
        "-m",
        "not slow and not gpu",
        "-q",
        "--durations=15",
        *session.posargs,
        env=_interpreter_env(),
    )


@nox.session
@nox.parametrize("package", list(DISTS))
def tests_pkg(session: nox.Session, package: str) -> None:
    """Build one wheel, install it with only its declared dependencies + test tools, run its tests."""
    wheels = Path(session.create_tmp()) / "wheels"
    wheels.mkdir(exist_ok=True)
    for old in wheels.glob("*"):
        old.unlink()
    _install_torch(session, "hatchling>=1.20")
    local = [*_workspace_deps(package), package]
    for name in local:
        session.run(
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheels),
            str(DISTS[name]),
        )
    [wheel] = wheels.glob(package.replace("-", "_") + "-*.whl")
    session.install(*CONSTRAINTS, "--find-links", str(wheels), f"{wheel}[test]")
    session.run(
        "pytest",
        str(DISTS[package] / "tests"),
        "-m",
        "not slow and not gpu",
        "-q",
        *session.posargs,
        env=_interpreter_env(),
    )


# The compatibility matrix (docs/development.md, "Compatibility"): each end of the version ranges
# that the pyprojects claim is one session. torch is 2.13.0 at both ends: it is the only torch with
# a CPU wheel on the dev/CI machines (any other resolves to a ~5.5 GB CUDA build), so it is also the
# lower bound every pyproject declares.
COMPAT_TORCH = "torch==2.13.0"


def _third_party_requirements() -> list[Requirement]:
    """Third-party requirements of every distribution: dependencies and the test extra."""
    workspace = {canonicalize_name(name) for name in DISTS}
    reqs: list[Requirement] = []
    for path in DISTS.values():
        project = tomllib.loads((path / "pyproject.toml").read_text())["project"]
        for text in [
            *project.get("dependencies", []),
            *project.get("optional-dependencies", {}).get("test", []),
        ]:
            req = Requirement(text)
            if canonicalize_name(req.name) not in workspace:
                reqs.append(req)
    return reqs


def _oldest_constraints() -> list[str]:
    """`name==X` for the lower bound `>=X` of every third-party requirement. Distributions that
    require the same package must declare the same lower bound (else the lower one would go
    untested), and every requirement needs one."""
    lowest: dict[str, tuple[Version, str]] = {}
    for req in _third_party_requirements():
        bounds = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
        if not bounds:
            raise ValueError(f"{req}: no lower bound to test; declare one (e.g. {req.name}>=X)")
        name, bound = canonicalize_name(req.name), max(bounds)
        if name in lowest and lowest[name][0] != bound:
            raise ValueError(
                f"{name}: lower bounds differ ({lowest[name][1]} vs {req}); the oldest session tests "
                "one version, so declare the same lower bound in every pyproject"
            )
        lowest[name] = (bound, str(req))
    return [f"{name}=={bound}" for name, (bound, _) in sorted(lowest.items())]


@nox.session
@nox.parametrize("end", ["oldest", "newest"])
def compat(session: nox.Session, end: str) -> None:
    """Every distribution and test suite at one end of the claimed version ranges.

    oldest: every third-party lower bound of the pyprojects installed exactly (constraints
    generated from them). newest: nothing pinned but torch; pip takes the newest transformers,
    accelerate, datasets, tokenizers, peft, ... that the pyprojects allow (CI runs this one)."""
    if end == "oldest":
        pins = _oldest_constraints()
        upgrade: list[str] = []
    else:
        pins = [COMPAT_TORCH]
        upgrade = ["--upgrade", "--upgrade-strategy", "eager"]  # a reused venv moves up too
    constraints = Path(session.create_tmp()) / f"{end}-constraints.txt"
    constraints.write_text("\n".join(pins) + "\n")
    pin = ("-c", str(constraints))
    session.install(*pin, "pip>=23", COMPAT_TORCH)
    session.install(*pin, *upgrade, *[arg for path in DISTS.values() for arg in ("-e", str(path))])
    session.install(*pin, *upgrade, *_extra_requirements("test"))
    versions = ", ".join(
        repr(d) for d in ("torch", "transformers", "tokenizers", "huggingface-hub", "accelerate",
                          "datasets", "peft", "safetensors", "pydantic", "triton", "numpy")
    )  # fmt: skip
    session.run(
        "python", "-c",
        f"import importlib.metadata as m; print(*(f'{{d}}=={{m.version(d)}}' for d in ({versions})))",
    )  # fmt: skip
    session.run(
        "pytest",
        *_test_paths(),
        "-m",
        "not slow and not gpu",
        "-q",
        "-p",
        "no:cacheprovider",
        *session.posargs,
        env=_interpreter_env(),
    )


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check + ruff format --check over the whole tree."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def build(session: nox.Session) -> None:
    """Wheels + sdists of every distribution, metadata checked with twine."""
    session.install("build", "hatchling>=1.20", "twine")
    out = ROOT / "dist"
    shutil.rmtree(out, ignore_errors=True)  # no stale artifacts of older versions in the check
    for path in DISTS.values():
        session.run("python", "-m", "build", "--no-isolation", "-o", str(out), str(path))
    session.run("twine", "check", "--strict", *map(str, sorted(out.glob("*"))))
    session.run("python", str(ROOT / ".ci" / "check_release_metadata.py"), str(out))


@nox.session(venv_backend="none", requires=["build"])
def install_check(session: nox.Session) -> None:
    """Each distribution alone from the dist/ wheelhouse in a fresh venv (on one torch-only base):
    siblings from dist/, `import` pulls only what it declares and uses, its README blocks run.
    `-- spam-opt meap` checks only those; `-- --bench` also writes import times and install sizes
    to docs/benchmarks.md (see .ci/install_check.py)."""
    session.run(sys.executable, str(ROOT / ".ci" / "install_check.py"), *session.posargs)


@nox.session
def quickstart(session: nox.Session) -> None:
    """The main job: real corpus, tokenizer, a small Llama trained on CPU, a report."""
    _install_all_editable(session, extras="quickstart")
    session.run("layerwise", "quickstart", *session.posargs, env=OFFLINE_ENV)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks of every distribution; each appends its rows to docs/benchmarks.md."""
    _install_all_editable(session, extras="test")
    for script in sorted(ROOT.glob("*/benchmarks/bench_*.py")) + sorted(
        ROOT.glob("packages/*/benchmarks/bench_*.py")
    ):
        session.run("python", str(script), *session.posargs, env=OFFLINE_ENV)


@nox.session
def slow(session: nox.Session) -> None:
    """Tests marked slow (longer training runs, reproductions at toy scale)."""
    _install_all_editable(session)
    session.run(
        "pytest", *_test_paths(), "-m", "slow and not gpu", *session.posargs, env=_interpreter_env()
    )


@nox.session
def real(session: nox.Session) -> None:
    """Real pretrained model, on CPU (not in CI): the SmolLM2-135M depth report (~4-10 min) into
    docs/reports/smollm2-135m/ and the slow loader tests. Extra args go to the report script."""
    _install_all_editable(session)
    session.install(*CONSTRAINTS, "gguf")
    session.run(
        "pytest", str(ROOT / "integration" / "tests" / "test_pretrained.py"), "-m", "slow",
        env=OFFLINE_ENV,
    )  # fmt: skip
    script = ROOT / "packages" / "depth-probe" / "benchmarks" / "real_smollm2.py"
    session.run("python", str(script), *session.posargs, env=OFFLINE_ENV)


@nox.session
def gpu(session: nox.Session) -> None:
    """On a CUDA machine: kernel tests for real (no interpreter), GPU tests, every paper-scale
    recipe for 5 steps at full size with its tokens/s and MFU (layerwise.recipes.smoke), then
    benchmarks. Refuses at once on a machine without an NVIDIA GPU."""
    if shutil.which("nvidia-smi") is None:
        session.error(
            "nox -s gpu needs an NVIDIA GPU (no nvidia-smi on PATH): run it on a CUDA machine; "
            "on CPU machines use nox -s tests"
        )
    _install_all_editable(session)
    os.environ.pop("TRITON_INTERPRET", None)
    session.run("pytest", *_test_paths(), "-m", "not slow", *session.posargs, env=OFFLINE_ENV)
    # refuses (exit 2) if torch sees no CUDA device, e.g. a CPU build of torch
    session.run("python", "-m", "layerwise.recipes.smoke", env=OFFLINE_ENV)
    bench(session)


# The official LLaDA / Dream code pins transformers 4.x: Dream's requirements 4.46.2, LLaDA's README
# 4.38.2 (its lm-eval script 4.49.0). 4.46.2 installs and imports on Python 3.11 with torch 2.13
# and runs both models' released files, so the reference venv uses it for both.
REFERENCE_TRANSFORMERS = "transformers==4.46.2"


@nox.session
def reference_dlm(session: nox.Session) -> None:
    """dlm-decode vs the OFFICIAL LLaDA / Dream modeling and samplers (not in CI; docs/dlm-decode.md,
    "Reference check"). A second venv with the transformers the official code pins runs
    packages/dlm-decode/reference/official_side.py: tiny random-weight models built with the
    official classes, saved in the released format, their logits and the official samplers'
    tokens; then compare.py, in this session's venv (current transformers, our packages
    editable), loads them with AutoModelForCausalLM and requires equal logits (fp32) and
    identical tokens. The official code is imported from checkouts at run time, never copied:
    LAYERWISE_FAST_DLLM (NVlabs/Fast-dLLM: llada/ and dream/) and LAYERWISE_LLADA (ML-GSAI/LLaDA:
    generate.py), each a work tree or a git repository."""
    import subprocess

    scripts = ROOT / "packages" / "dlm-decode" / "reference"
    tmp = Path(session.create_tmp())
    sources = tmp / "official-src"
    shutil.rmtree(sources, ignore_errors=True)
    sources.mkdir()
    info: list[str] = []

    def checkout(var: str, default: str, files: tuple[str, ...], dest: Path) -> Path:
        """A work tree that has `files`, or the files taken from a git repository's HEAD."""
        path = Path(os.environ.get(var, default))
        if all((path / f).exists() for f in files):
            return path
        git = ["git", "-C", str(path)]
        found = path.is_dir() and subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True
        )
        if not found or found.returncode != 0:
            session.error(
                f"{var}={path}: no checkout there (need {', '.join(files)}); set {var} to a "
                "clone of the official repository (nox -s reference_dlm is not part of CI)"
            )
        info.append(f"{path.parent.name if path.name == 'repo' else path.name}@{found.stdout[:12]}")
        dest.mkdir(parents=True)
        archive = subprocess.run([*git, "archive", "HEAD", *files], capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        if not all((dest / f).exists() for f in files):
            session.error(f"{var}={path}: its HEAD lacks {', '.join(files)}")
        return dest

    fast = checkout(
        "LAYERWISE_FAST_DLLM", "/work/.mirror/NVlabs+Fast-dLLM/repo", ("llada", "dream"),
        sources / "fast-dllm",
    )  # fmt: skip
    llada = checkout(
        "LAYERWISE_LLADA", "/work/.mirror/ML-GSAI+LLaDA/repo", ("generate.py",), sources / "llada"
    )

    # The official side: torch pinned first (CPU wheel), then the pinned transformers.
    old = tmp / "official-venv"
    old_python = str(old / "bin" / "python")
    marker = old / "installed.txt"
    if not marker.is_file() or marker.read_text() != REFERENCE_TRANSFORMERS:
        shutil.rmtree(old, ignore_errors=True)
        session.run(sys.executable, "-m", "venv", str(old), external=True)
        pip = (old_python, "-m", "pip", "install", "-q")
        session.run(*pip, *CONSTRAINTS, "pip>=23", "torch==2.13.0", external=True)
        # not constraints.txt here: it pins the current transformers / tokenizers
        session.run(*pip, "torch==2.13.0", REFERENCE_TRANSFORMERS, "einops", external=True)
        marker.write_text(REFERENCE_TRANSFORMERS)
    out = tmp / "reference-out"
    shutil.rmtree(out, ignore_errors=True)
    session.run(
        "nice", old_python, str(scripts / "official_side.py"), "--fast-dllm", str(fast),
        "--llada-generate", str(llada / "generate.py"), "--out", str(out),
        "--source-info", ", ".join(info), env=OFFLINE_ENV, external=True,
    )  # fmt: skip

    # Our side: current transformers, the workspace packages dlm-decode needs, editable.
    _install_torch(session)
    local = [*_workspace_deps("dlm-decode"), "dlm-decode"]
    session.install(*CONSTRAINTS, *[arg for name in local for arg in ("-e", str(DISTS[name]))])
    session.run(
        "nice", "python", str(scripts / "compare.py"), str(out), env=OFFLINE_ENV, external=True
    )


@nox.session
def reference_neurotrails(session: nox.Session) -> None:
    """sparse_ft's DST engine and multi-head model vs the OFFICIAL NeuroTrails code (not in CI;
    docs/neurotrails.md, "Reference check"): ERK densities, the cosine prune fraction, a hard
    prune + gradient regrow, a 12-step DST trajectory (bitwise masks, weights, Adam moments), the
    soft sampler's statistics and the multi-head / ensemble forward with reference_quirks. The
    official `language_modeling/` code is imported at run time from LAYERWISE_NEUROTRAILS (a clone
    of bramgrooten/neurotrails: work tree or git repository), never copied; it runs on CPU under
    the current transformers (its Llama is self-contained), so one venv serves both sides."""
    path = os.environ.get("LAYERWISE_NEUROTRAILS", "/work/.mirror/bramgrooten+neurotrails/repo")
    if not Path(path).exists():
        session.error(
            f"LAYERWISE_NEUROTRAILS={path}: no checkout there; set it to a clone of "
            "github.com/bramgrooten/neurotrails (nox -s reference_neurotrails is not part of CI)"
        )
    _install_torch(session)
    local = [*_workspace_deps("sparse-ft"), "sparse-ft"]
    session.install(
        *CONSTRAINTS, "numpy", *[arg for name in local for arg in ("-e", str(DISTS[name]))]
    )
    script = ROOT / "packages" / "sparse-ft" / "reference" / "neurotrails_check.py"
    session.run(
        "nice", "python", str(script), "--official", path, *session.posargs, env=OFFLINE_ENV,
        external=True,
    )  # fmt: skip

"""Every ```python block of every README and docs page runs as written on CPU, offline.

Each block runs alone in a fresh interpreter (cwd: an empty temp dir; hub offline; no CUDA
device; Triton in interpreter mode), so a README can never use a name it does not define or a
model it cannot build. A block that cannot run there (a GPU, a hub model) is preceded by
`<!-- not-run: REASON -->` and followed by a CPU twin that does run.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from layerwise_core.testing import NOT_RUN_MARKER, markdown_python_blocks, not_run_reason

ROOT = Path(__file__).resolve().parents[2]
PATTERNS = (
    "README.md",
    "docs/*.md",
    "packages/*/README.md",
    "kernels/README.md",
    "integration/README.md",
    "examples/**/*.md",
)
TIMEOUT_S = 120  # a block should take a few seconds; this only stops a hung one
DEPRECATIONS_ARE_ERRORS = (
    "-W",
    "error::FutureWarning:__main__",
    "-W",
    "error::DeprecationWarning:__main__",
)


def _markdown_files() -> list[Path]:
    files = {path for pattern in PATTERNS for path in ROOT.glob(pattern)}
    return sorted(files)


def _read(path: Path, root: Path) -> tuple[list[tuple[str, int, str, str | None]], list[str]]:
    """The blocks of one file, (file, fence line, code, not-run reason or None), and what is wrong
    with its not-run markers: no reason, no run block right after, or no block under the marker."""
    rel = path.relative_to(root).as_posix()
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks = [(rel, n, code, not_run_reason(lines, n)) for n, code in markdown_python_blocks(path)]
    problems = []
    for i, (_, line, _, reason) in enumerate(blocks):
        if reason is None:
            continue
        if not reason:
            problems.append(f"{rel}:{line}: say why after `<!-- not-run: ` (e.g. needs a CUDA GPU)")
        if i + 1 == len(blocks) or blocks[i + 1][3] is not None:
            problems.append(f"{rel}:{line}: a not-run block needs a CPU twin block right after it")
    marked = sum(reason is not None for *_, reason in blocks)
    markers = [n for n, text in enumerate(lines, start=1) if NOT_RUN_MARKER.match(text)]
    if len(markers) != marked:
        problems.append(
            f"{rel}: {len(markers)} not-run markers (lines {markers}) but {marked} marked "
            "```python blocks: put each marker on the line right before a ```python fence"
        )
    return blocks, problems


def _collect(paths: list[Path], root: Path):
    blocks, problems = [], []
    for path in paths:
        file_blocks, file_problems = _read(path, root)
        blocks += file_blocks
        problems += file_problems
    return blocks, problems


BLOCKS, _ = _collect(_markdown_files(), ROOT)
RUN = [block for block in BLOCKS if block[3] is None]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TRITON_INTERPRET="1",
        TOKENIZERS_PARALLELISM="false",
        CUDA_VISIBLE_DEVICES="",  # CPU even on a GPU machine
        MPLBACKEND="Agg",
    )
    return env


def _run_block(code: str, tmp_path: Path, name: str = "block") -> subprocess.CompletedProcess:
    """Run `code` as a script in a fresh interpreter, in an empty folder, offline, on CPU."""
    script = tmp_path / f"{name}.py"
    script.write_text(code, encoding="utf-8")
    work = tmp_path / "cwd"
    work.mkdir()
    return subprocess.run(
        # a deprecated name called by the block itself is an error: READMEs show current names
        [sys.executable, *DEPRECATIONS_ARE_ERRORS, str(script)],
        cwd=work,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


@pytest.mark.parametrize(
    "file, line, code", [b[:3] for b in RUN], ids=[f"{b[0]}:{b[1]}" for b in RUN]
)
def test_block_runs_as_written(file, line, code, tmp_path):
    result = _run_block(code, tmp_path, f"{Path(file).parent.name or 'root'}_{line}")
    assert result.returncode == 0, (
        f"the python block at {file}:{line} failed (exit {result.returncode}):\n"
        f"{result.stderr[-3000:]}"
    )


RUNNER_CHECKS = {
    "undefined-name": ("print(ids)", "NameError"),
    "deprecated-call": ("import warnings\nwarnings.warn('old', FutureWarning)", "FutureWarning"),
    "cpu-only": ("import torch\nassert not torch.cuda.is_available()", None),
    "empty-cwd": ("import os\nassert os.listdir() == []", None),
    "offline": ("import os\nassert os.environ['HF_HUB_OFFLINE'] == '1'", None),
    "triton-interpreter": ("import os\nassert os.environ['TRITON_INTERPRET'] == '1'", None),
}


@pytest.mark.parametrize("code, error", RUNNER_CHECKS.values(), ids=RUNNER_CHECKS.keys())
def test_the_runner_fails_what_a_reader_would_hit(code, error, tmp_path):
    """The harness itself: an undefined name or a deprecated call fails; CPU, empty cwd, offline."""
    result = _run_block(code, tmp_path)
    if error is None:
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0 and error in result.stderr


def test_not_run_blocks_say_why_and_have_a_cpu_twin():
    _, problems = _collect(_markdown_files(), ROOT)
    assert not problems, "\n".join(problems)


def test_marker_checks_on_a_hand_written_readme(tmp_path):
    fence = "```"
    text = "\n".join(
        [
            "<!-- not-run: needs a CUDA GPU; CPU twin below -->",  # 1: fine, twin at 7
            f"{fence}python",
            "x = 1",
            fence,
            "",
            "The CPU twin:",
            f"{fence}python",
            "x = 1",
            fence,
            "<!-- not-run -->",  # 10: no reason, and no twin after it
            f"{fence}python",
            "y = 2",
            fence,
            "<!-- not-run: a marker above prose marks nothing -->",  # 14: orphan
            "prose",
            "",
        ]
    )
    (tmp_path / "README.md").write_text(text)
    blocks, problems = _collect([tmp_path / "README.md"], tmp_path)
    assert [(line, reason) for _, line, _, reason in blocks] == [
        (2, "needs a CUDA GPU; CPU twin below"),
        (7, None),
        (11, ""),
    ]
    assert len(problems) == 3
    assert "README.md:11: say why" in problems[0]
    assert "README.md:11: a not-run block needs a CPU twin" in problems[1]
    assert "3 not-run markers (lines [1, 10, 14]) but 2 marked" in problems[2]


def test_every_package_readme_has_a_block_that_runs():
    """The collection itself can fail: a renamed folder or fence must not empty the test."""
    readmes = {p.relative_to(ROOT).as_posix() for p in ROOT.glob("packages/*/README.md")}
    readmes |= {"README.md", "kernels/README.md", "integration/README.md"}
    run_files = {file for file, *_ in RUN}
    assert sorted(readmes - run_files) == []

"""Release metadata of every wheel and sdist in a wheelhouse is ready for an index.

    python .ci/check_release_metadata.py dist/        (run by `nox -s build` after twine check)

twine checks that the metadata parses and the README renders; this checks what twine does not:
every distribution of the workspace is there as a wheel and an sdist, each says the same licence
(an SPDX expression, PEP 639) and ships the repository's Apache-2.0 text, supports the Python
versions the classifiers claim, links to its source, docs, issues and changelog, and has a long
description whose links still work on an index page (no links relative to the repository).
"""

from __future__ import annotations

import email.parser
import re
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LICENSE = "Apache-2.0"
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
CLASSIFIERS = (
    "Intended Audience :: Science/Research",
    "Operating System :: OS Independent",
    "Topic :: Scientific/Engineering :: Artificial Intelligence",
    *(f"Programming Language :: Python :: {v}" for v in PYTHONS),
)
URLS = ("Homepage", "Documentation", "Source", "Issues", "Changelog")
# [text](target) whose target is neither absolute nor an anchor: broken once rendered on an index
RELATIVE_LINK = re.compile(r"\]\((?!https?://|mailto:|#)([^)\s]+)\)")


def _workspace_names() -> list[str]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    pyprojects = [*ROOT.glob("packages/*/pyproject.toml")]
    pyprojects += [ROOT / "kernels" / "pyproject.toml", ROOT / "integration" / "pyproject.toml"]
    return sorted(tomllib.loads(p.read_text())["project"]["name"] for p in pyprojects)


def _members(path: Path) -> dict[str, bytes]:
    """Metadata file and licence files of one wheel or sdist: {'METADATA': ..., 'LICENSE': ...}."""
    out: dict[str, bytes] = {}
    if path.suffix == ".whl":
        with zipfile.ZipFile(path) as whl:
            for name in whl.namelist():
                parts = name.split("/")
                if len(parts) == 2 and parts[0].endswith(".dist-info") and parts[1] == "METADATA":
                    out["METADATA"] = whl.read(name)
                elif len(parts) == 3 and parts[0].endswith(".dist-info") and parts[1] == "licenses":
                    out[parts[2]] = whl.read(name)
    else:
        with tarfile.open(path) as sdist:
            for member in sdist.getmembers():
                parts = member.name.split("/")
                if len(parts) == 2 and parts[1] in ("PKG-INFO", "LICENSE"):
                    data = sdist.extractfile(member)
                    assert data is not None
                    out["METADATA" if parts[1] == "PKG-INFO" else "LICENSE"] = data.read()
    return out


def check(path: Path, license_text: bytes) -> list[str]:
    """Problems of one artifact, each a line that names the fix."""
    members = _members(path)
    if "METADATA" not in members:
        return [f"{path.name}: no METADATA / PKG-INFO - is it a wheel or sdist built by hatchling?"]
    meta = email.parser.BytesParser().parsebytes(members["METADATA"])
    name, problems = meta["Name"], []

    def problem(text: str) -> None:
        problems.append(f"{path.name}: {text}")

    if meta["License-Expression"] != LICENSE:
        problem(f'License-Expression is {meta["License-Expression"]!r}: set license = "{LICENSE}"')
    if "LICENSE" not in (meta.get_all("License-File") or []):
        problem('no License-File: LICENSE - set license-files = ["LICENSE"] in its pyproject')
    if members.get("LICENSE") != license_text:
        problem("its LICENSE is missing or differs from the root LICENSE - copy the root one")
    classifiers = meta.get_all("Classifier") or []
    for wanted in CLASSIFIERS:
        if wanted not in classifiers:
            problem(f"classifier {wanted!r} missing")
    for found in classifiers:
        if found.startswith("License ::"):
            problem(f"{found!r}: PEP 639 replaces licence classifiers by License-Expression")
    if meta["Requires-Python"] != f">={PYTHONS[0]}":
        problem(f"Requires-Python is {meta['Requires-Python']!r}, classifiers say >={PYTHONS[0]}")
    labels = {url.split(",")[0].strip() for url in meta.get_all("Project-URL") or []}
    for label in URLS:
        if label not in labels:
            problem(f"[project.urls] has no {label}")
    for target in RELATIVE_LINK.findall(meta.get_payload() or ""):
        problem(f"README links to {target!r}: relative links break on an index, use a full URL")
    if not name:
        problem("no Name")
    return problems


def main(wheelhouse: Path) -> int:
    license_text = (ROOT / "LICENSE").read_bytes()
    artifacts = sorted([*wheelhouse.glob("*.whl"), *wheelhouse.glob("*.tar.gz")])
    problems: list[str] = []
    for name in _workspace_names():
        stem = name.replace("-", "_")
        for kind, pattern in (("wheel", f"{stem}-*.whl"), ("sdist", f"{stem}-*.tar.gz")):
            if not list(wheelhouse.glob(pattern)):
                problems.append(f"{name}: no {kind} in {wheelhouse} - run nox -s build")
    for path in artifacts:
        problems += check(path, license_text)
    for line in problems:
        print(line)
    print(f"release metadata: {len(artifacts)} artifacts checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "dist"))

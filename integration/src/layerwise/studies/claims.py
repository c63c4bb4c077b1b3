"""A study's expected directions, checked in its report: `report.claims`.

    report:
      pair: {tag: family, a: dlm, b: ar}
      claims:
        - {text: DLM degrades less under 3-bit GPTQ, metric: quantize/gptq_3bit/rel_increase,
           expect: lower, group: dlm, where: {data: full}}
        - {text: EIS beats DIS for the DLM, metric: wanda/eis_minus_dis_0.1, expect: negative,
           where: {family: dlm, data: full}}

`metric` is `<stage label>/<summary metric>`. At each checkpoint fraction a claim counts its
cases: `lower` / `higher`: pairs of `report.pair` (runs equal in every other tag, same seed)
where the value of `group` is below / above the other one's; `negative` / `positive`: (run, seed)
values below / above 0. Only runs whose tags match `where` count. A fraction holds when at least
`min_share` of its cases do; the claim holds when at least `min_checkpoints` fractions hold
(spec B.7: 5 of 6 (LR, seed) runs, at >= 2 checkpoints); it is "not measurable" while fewer than
`min_checkpoints` fractions have cases, and "does not hold" otherwise.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from layerwise_core import LayerwiseConfig

__all__ = ["ClaimConfig", "claim_counts", "claims_section"]


class ClaimConfig(LayerwiseConfig):
    """One expected direction of a study (module docstring)."""

    text: str  # the claim in words
    metric: str  # <stage label>/<summary metric>, e.g. quantize/gptq_3bit/rel_increase
    expect: Literal["lower", "higher", "negative", "positive"]
    group: str | None = None  # lower / higher: the value of report.pair.tag expected lower/higher
    where: dict[str, str] = Field(default_factory=dict)  # only runs with these tags
    min_share: float = Field(5 / 6, gt=0.0, le=1.0)  # of the cases at a fraction
    min_checkpoints: int = Field(2, ge=1)  # fractions that must hold

    @field_validator("where", mode="before")
    @classmethod
    def _as_text(cls, value: Any) -> Any:
        # tags are text (RunSpec.tags): `lr: 0.001` in YAML is a float
        return {str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else value


def _values(results: dict, claim: ClaimConfig, fraction: str):
    """(tags, seed, value) of every run and seed matching `where` with the metric at `fraction`."""
    label, metric = claim.metric.split("/", 1)
    for entry in results["runs"].values():
        tags = entry["tags"]
        if any(tags.get(k) != str(v) for k, v in claim.where.items()):
            continue
        for seed, seed_entry in entry["seeds"].items():
            done = seed_entry["analyses"].get(label, {}).get(fraction, {})
            value = done.get("summary", {}).get(metric)
            if value is not None:
                yield tags, seed, value


def claim_counts(results: dict, claim: ClaimConfig, fraction: str) -> tuple[int, int]:
    """(cases that hold, cases) of `claim` at checkpoint `fraction` (a key such as "0.5")."""
    found = list(_values(results, claim, fraction))
    if claim.expect in ("negative", "positive"):
        sign = -1 if claim.expect == "negative" else 1
        return sum(sign * v > 0 for _, _, v in found), len(found)
    pair = results["config"].get("report", {}).get("pair")
    if pair is None or claim.group not in (pair["a"], pair["b"]):
        raise ValueError(
            f"claim {claim.text!r}: expect={claim.expect} compares the two values of "
            "report.pair; set report.pair and `group` to one of its values"
        )
    other = pair["b"] if claim.group == pair["a"] else pair["a"]
    groups: dict[tuple, dict[str, float]] = {}
    for tags, seed, value in found:
        if pair["tag"] in tags:
            key = (tuple(sorted((k, v) for k, v in tags.items() if k != pair["tag"])), seed)
            groups.setdefault(key, {})[tags[pair["tag"]]] = value
    cases = [g for g in groups.values() if claim.group in g and other in g]
    sign = -1 if claim.expect == "lower" else 1
    return sum(sign * (g[claim.group] - g[other]) > 0 for g in cases), len(cases)


def claims_section(results: dict) -> list[str]:
    """The report's "Expected directions" table: per claim, k/n per fraction and the verdict."""
    claims = [ClaimConfig.model_validate(c) for c in results["config"]["report"].get("claims", [])]
    if not claims:
        return []
    fractions = [f"{f:g}" for f in results["config"]["checkpoints"]]
    lines = [
        "## Expected directions",
        "",
        "Cases that hold / cases at each checkpoint fraction (pairs: same other tags and seed); "
        "a fraction holds at the claim's share of its cases, the claim at its number of "
        "fractions.",
        "",
        "| claim | metric | " + " | ".join(f"at {f}" for f in fractions) + " | verdict |",
        "|" + "---|" * (len(fractions) + 3),
    ]
    for claim in claims:
        counts = [claim_counts(results, claim, f) for f in fractions]
        held = sum(n > 0 and k >= claim.min_share * n for k, n in counts)
        measured = sum(n > 0 for _, n in counts)
        if held >= claim.min_checkpoints:
            verdict = "holds"
        elif measured < claim.min_checkpoints:  # too few checkpoints with cases to decide
            verdict = "not measurable"
        else:
            verdict = "does not hold"
        cells = [f"{k}/{n}" if n else "-" for k, n in counts]
        lines.append(
            f"| {claim.text} | `{claim.metric}` | " + " | ".join(cells) + f" | {verdict} |"
        )
    return [*lines, ""]

"""Every analysis stage by name (`analyses: {label: {name: ..., ...}}` in a study YAML).

The layer-collapse study's stages live in `layerwise.studies.analyses` (with the stage interface,
`AnalysisContext`), the sparsity-vs-depth study's in `layerwise.studies.depth_stages`, NeuroTrails'
in `layerwise.studies.ensemble_stages`; this module only joins them, so that none imports another.
"""

from __future__ import annotations

from layerwise.studies.analyses import STAGES, _Stage
from layerwise.studies.depth_stages import DepthMetricsStage, DepthProfileStage
from layerwise.studies.ensemble_stages import EnsembleStage

__all__ = ["ANALYSES"]

ANALYSES: dict[str, type[_Stage]] = {
    **STAGES,
    "depth_profile": DepthProfileStage,
    "depth_metrics": DepthMetricsStage,
    "ensemble": EnsembleStage,
}

"""depth-probe: how a language model uses its depth.

Single-pass metrics, all from ONE captured forward (`capture_depth` / `probe`):
`block_influence` (ShortGPT), `angular_distance` (Gromov et al.), `residual_contributions` and
`output_variance` (Csordas et al.; Curse of Depth), `logit_lens`, `cka_matrix` / `linear_cka`,
`similarity_matrix` (pooled / per-token / detrended) and `massive_activations`.
Interventions without copying the model: `remove_layers`, `skip_layers`, `skip_effect`.
Sweeps under the likelihood and generation protocols: `single_layer_sweep`,
`contiguous_block_sweep`, `lowest_influence_sweep` with `PerplexityScorer`,
`MultipleChoiceScorer`, `ExactMatchScorer` (or `LmEvalScorer`). Reports: `report(...)`.
Layer collapse of diffusion vs autoregressive LMs (arXiv 2605.06366): `diffusion_probe_inputs`
(masked copies for a DLM), `channel_magnitudes` + `find_super_outliers`, `layer_similarities` +
`layer_collapse` (redundancy profile, early-vs-late contrast, collapse run), `heavy_tail_alphas`
(FARMS + Hill alpha), `elbo_loglikelihood` / `fixed_mask_elbo`, `zero_outlier_channel` (hook or
weight rows, undone on exit) and `repetition_metrics` of generations.
"""

from depth_probe.__about__ import __version__
from depth_probe.angular_distance import AngularDistances, angular_distance
from depth_probe.block_influence import block_influence, lowest_influence_layers
from depth_probe.capture import DepthCapture, capture_depth
from depth_probe.cka import cka_matrix, linear_cka
from depth_probe.collapse import (
    LayerCollapse,
    LayerSimilarities,
    collapse_run,
    early_late_contrast,
    layer_collapse,
    layer_similarities,
    redundancy_profile,
)
from depth_probe.elbo import diffusion_probe_inputs, elbo_loglikelihood, fixed_mask_elbo
from depth_probe.heavy_tail_alpha import (
    HeavyTailAlphas,
    farms_eigenvalues,
    heavy_tail_alphas,
    weight_alpha,
)
from depth_probe.interventions import out_projections, zero_outlier_channel
from depth_probe.layer_removal import remove_layers, skip_layers
from depth_probe.lm_eval_adapter import LmEvalScorer, evaluate_with_lm_eval
from depth_probe.logit_lens import LogitLens, logit_lens
from depth_probe.massive_activations import MassiveActivations, massive_activations
from depth_probe.probe import DepthProbe, probe
from depth_probe.repetition import (
    RepetitionMetrics,
    longest_loop,
    repeated_ngram_share,
    repetition_metrics,
)
from depth_probe.report import DepthReport, encode_texts, report, write_report
from depth_probe.residual_contributions import (
    ResidualContributions,
    output_variance,
    residual_contributions,
)
from depth_probe.scoring import (
    ExactMatchScorer,
    MultipleChoiceItem,
    MultipleChoiceScorer,
    PerplexityScorer,
    Scorer,
    first_line,
    greedy_generate,
    is_masked_diffusion,
)
from depth_probe.similarity import SIMILARITY_VARIANTS, similarity_matrix
from depth_probe.skip_effect import SkipEffect, skip_effect, skip_layer_before
from depth_probe.super_outliers import (
    ChannelMagnitudes,
    SuperOutliers,
    channel_magnitudes,
    find_super_outliers,
)
from depth_probe.sweeps import (
    SweepResult,
    contiguous_block_removals,
    contiguous_block_sweep,
    lowest_influence_removals,
    lowest_influence_sweep,
    single_layer_removals,
    single_layer_sweep,
    sweep,
)

__all__ = [
    "SIMILARITY_VARIANTS",
    "AngularDistances",
    "ChannelMagnitudes",
    "DepthCapture",
    "DepthProbe",
    "DepthReport",
    "ExactMatchScorer",
    "HeavyTailAlphas",
    "LayerCollapse",
    "LayerSimilarities",
    "LmEvalScorer",
    "LogitLens",
    "MassiveActivations",
    "MultipleChoiceItem",
    "MultipleChoiceScorer",
    "PerplexityScorer",
    "RepetitionMetrics",
    "ResidualContributions",
    "Scorer",
    "SkipEffect",
    "SuperOutliers",
    "SweepResult",
    "__version__",
    "angular_distance",
    "block_influence",
    "capture_depth",
    "channel_magnitudes",
    "cka_matrix",
    "collapse_run",
    "contiguous_block_removals",
    "contiguous_block_sweep",
    "diffusion_probe_inputs",
    "early_late_contrast",
    "elbo_loglikelihood",
    "encode_texts",
    "evaluate_with_lm_eval",
    "farms_eigenvalues",
    "find_super_outliers",
    "first_line",
    "fixed_mask_elbo",
    "greedy_generate",
    "heavy_tail_alphas",
    "is_masked_diffusion",
    "layer_collapse",
    "layer_similarities",
    "linear_cka",
    "logit_lens",
    "longest_loop",
    "lowest_influence_layers",
    "lowest_influence_removals",
    "lowest_influence_sweep",
    "massive_activations",
    "out_projections",
    "output_variance",
    "probe",
    "redundancy_profile",
    "remove_layers",
    "repeated_ngram_share",
    "repetition_metrics",
    "report",
    "residual_contributions",
    "similarity_matrix",
    "single_layer_removals",
    "single_layer_sweep",
    "skip_effect",
    "skip_layer_before",
    "skip_layers",
    "sweep",
    "weight_alpha",
    "write_report",
    "zero_outlier_channel",
]

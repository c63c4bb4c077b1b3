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
Depth usage vs sparsity (Muhtar et al., ICML 2026): `LayerVarianceMonitor` / `layer_variance`
(training-time per-layer output variance from block hooks), `jacobian_distance` (row-wise, sampled),
`usefulness` (affine replacement), `causal_scores`, `permutation_scores`, `weight_sparsity`,
`attention_sparsity`, `expert_load`, the interventions `swap_blocks` / `affine_replacement` (undone on
exit) and the variance toy model `variance_toy_model` / `toy_jacobian_distance`.
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
from depth_probe.depth_usage import (
    CausalScores,
    JacobianDistance,
    LayerVariance,
    LayerVarianceMonitor,
    PermutationScores,
    Usefulness,
    affine_replacement,
    block_jacobian,
    causal_scores,
    fit_affine,
    full_block_jacobian,
    jacobian_distance,
    layer_variance,
    next_token_loss,
    permutation_scores,
    swap_blocks,
    usefulness,
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
from depth_probe.sparsity_measures import (
    AttentionSparsity,
    ExpertLoad,
    WeightSparsity,
    attention_entropy_stats,
    attention_sparsity,
    eager_attention,
    expert_load,
    expert_load_from_selections,
    find_routers,
    weight_sparsity,
)
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
from depth_probe.variance_toy import (
    ToyJacobian,
    ToyVariance,
    toy_jacobian_distance,
    toy_step_jacobian,
    variance_toy_model,
)

__all__ = [
    "SIMILARITY_VARIANTS",
    "AngularDistances",
    "AttentionSparsity",
    "CausalScores",
    "ChannelMagnitudes",
    "DepthCapture",
    "DepthProbe",
    "DepthReport",
    "ExactMatchScorer",
    "ExpertLoad",
    "HeavyTailAlphas",
    "JacobianDistance",
    "LayerCollapse",
    "LayerSimilarities",
    "LayerVariance",
    "LayerVarianceMonitor",
    "LmEvalScorer",
    "LogitLens",
    "MassiveActivations",
    "MultipleChoiceItem",
    "MultipleChoiceScorer",
    "PermutationScores",
    "PerplexityScorer",
    "RepetitionMetrics",
    "ResidualContributions",
    "Scorer",
    "SkipEffect",
    "SuperOutliers",
    "SweepResult",
    "ToyJacobian",
    "ToyVariance",
    "Usefulness",
    "WeightSparsity",
    "__version__",
    "affine_replacement",
    "angular_distance",
    "attention_entropy_stats",
    "attention_sparsity",
    "block_influence",
    "block_jacobian",
    "capture_depth",
    "causal_scores",
    "channel_magnitudes",
    "cka_matrix",
    "collapse_run",
    "contiguous_block_removals",
    "contiguous_block_sweep",
    "diffusion_probe_inputs",
    "eager_attention",
    "early_late_contrast",
    "elbo_loglikelihood",
    "encode_texts",
    "evaluate_with_lm_eval",
    "expert_load",
    "expert_load_from_selections",
    "farms_eigenvalues",
    "find_routers",
    "find_super_outliers",
    "first_line",
    "fit_affine",
    "fixed_mask_elbo",
    "full_block_jacobian",
    "greedy_generate",
    "heavy_tail_alphas",
    "is_masked_diffusion",
    "jacobian_distance",
    "layer_collapse",
    "layer_similarities",
    "layer_variance",
    "linear_cka",
    "logit_lens",
    "longest_loop",
    "lowest_influence_layers",
    "lowest_influence_removals",
    "lowest_influence_sweep",
    "massive_activations",
    "next_token_loss",
    "out_projections",
    "output_variance",
    "permutation_scores",
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
    "swap_blocks",
    "sweep",
    "toy_jacobian_distance",
    "toy_step_jacobian",
    "usefulness",
    "variance_toy_model",
    "weight_alpha",
    "weight_sparsity",
    "write_report",
    "zero_outlier_channel",
]

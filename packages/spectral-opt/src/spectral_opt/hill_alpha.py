"""The Hill estimator of TempBalance (alpha of an ESD tail), re-exported unchanged from
`layerwise_core.heavy_tail`, where it lives so that depth-probe's heavy-tail study uses the same
code (method packages never import each other). See that module for the equations and fits.
"""

from __future__ import annotations

from layerwise_core.heavy_tail import FITS, PowerLawFit, fit_power_law, hill_alpha, normalise_fit

_normalise_fit = normalise_fit  # the name spectral_opt's controllers import

__all__ = ["FITS", "PowerLawFit", "fit_power_law", "hill_alpha"]

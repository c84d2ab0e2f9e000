"""gainderive: weight-initialisation gains for any activation from exact Gaussian moments.

For z ~ N(0, q) and an activation f, gainderive computes E[f(z)], E[f(z)^2],
E[f'(z)^2] and Var f(z) (as verified closed forms where they exist, by
kink-aware quadrature to ~1e-13 otherwise, at any precision with mpmath, or by
Monte Carlo as an independent check) and from them the variance-preserving
gains sqrt(q / E[f^2]) (fan_in) and 1 / sqrt(E[f'^2]) (fan_out).

>>> import gainderive
>>> round(float(gainderive.moments("elu").second_moment.value), 12)
0.644945417493
"""

from . import correlation, init, meanfield, solve
from .activation import Activation
from .closed_form import ClosedForm, closed_forms
from .errors import (
    CheckError,
    ConvergenceError,
    DiracDerivativeError,
    DivergenceError,
    FormulaError,
    GainDeriveError,
    ParameterError,
    UnknownActivationError,
    VarianceError,
)
from .estimate import Estimate
from .gains import Gains, gain, gains
from .init import calculate_gain
from .moments import Moments, expectation, moments
from .registry import REGISTRY, activation
from .tables import Table, table

__version__ = "0.1.0"

__all__ = [
    "REGISTRY",
    "Activation",
    "CheckError",
    "ClosedForm",
    "ConvergenceError",
    "DiracDerivativeError",
    "DivergenceError",
    "Estimate",
    "FormulaError",
    "GainDeriveError",
    "Gains",
    "Moments",
    "ParameterError",
    "Table",
    "UnknownActivationError",
    "VarianceError",
    "__version__",
    "activation",
    "calculate_gain",
    "closed_forms",
    "correlation",
    "expectation",
    "gain",
    "gains",
    "init",
    "meanfield",
    "moments",
    "solve",
    "table",
]

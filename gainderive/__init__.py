"""gainderive: weight-initialisation gains for any activation from exact Gaussian moments.

For z ~ N(0, q) and an activation f, gainderive computes E[f(z)], E[f(z)^2],
E[f'(z)^2] and Var f(z) (as verified closed forms where they exist, by
kink-aware quadrature to ~1e-13 otherwise, at any precision with mpmath, or by
Monte Carlo as an independent check) and from them the variance-preserving
gains sqrt(q / E[f^2]) (fan_in) and 1 / sqrt(E[f'^2]) (fan_out).

>>> import gainderive
>>> round(float(gainderive.moments("elu").second_moment.value), 12)
0.644945417493

The names below load on first use (PEP 562), so ``import gainderive`` -- and the pytest plugin, which every
pytest run in an environment with gainderive installed imports -- costs no sympy, scipy, mpmath or numpy
until something is computed.
"""

from __future__ import annotations

import sys
import types
from importlib import import_module
from typing import TYPE_CHECKING, Any

from ._version import __version__

#: Exported name -> the submodule that defines it (a submodule itself where the name is the module).
_EXPORTS = {
    "REGISTRY": ".registry",
    "Activation": ".activation",
    "CheckError": ".errors",
    "ClosedForm": ".closed_form",
    "ConvergenceError": ".errors",
    "DiracDerivativeError": ".errors",
    "DivergenceError": ".errors",
    "Estimate": ".estimate",
    "FormulaError": ".errors",
    "GainDeriveError": ".errors",
    "Gains": ".gains",
    "Moments": ".moments",
    "ParameterError": ".errors",
    "Table": ".tables",
    "UnknownActivationError": ".errors",
    "VarianceError": ".errors",
    "activation": ".registry",
    "calculate_gain": ".init",
    "closed_forms": ".verify",
    "correlation": None,
    "expectation": ".moments",
    "gain": ".gains",
    "gains": ".gains",
    "init": None,
    "meanfield": None,
    "moments": ".moments",
    "plot": ".plotting",
    "solve": None,
    "table": ".tables",
}

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
    "plot",
    "solve",
    "table",
]

#: Exported functions named like a submodule (gainderive.moments is the function moments.moments): importing
#: the submodule must not replace the function on the package, as the import system otherwise would.
_SHADOWED = frozenset({"activation", "gains", "moments"})


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _SHADOWED and isinstance(value, types.ModuleType):
            return  # the submodule stays reachable as sys.modules["gainderive.<name>"]
        super().__setattr__(name, value)


def __getattr__(name: str) -> Any:
    if name.startswith("_"):  # __wrapped__, __file__ probes and the like: never a submodule import
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name in _EXPORTS and _EXPORTS[name] is not None:
        value = getattr(import_module(_EXPORTS[name], __name__), name)
    else:  # an exported submodule, or any other one, as when every module was imported eagerly (gainderive.tables)
        try:
            value = import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


sys.modules[__name__].__class__ = _Package

if TYPE_CHECKING:  # for type checkers and IDEs: the lazy names as if imported eagerly
    from . import correlation, init, meanfield, solve
    from .activation import Activation
    from .closed_form import ClosedForm
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
    from .plotting import plot
    from .registry import REGISTRY, activation
    from .tables import Table, table
    from .verify import closed_forms

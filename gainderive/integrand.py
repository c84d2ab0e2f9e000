"""One integrand description shared by every backend.

For z ~ N(0, q) the backends compute E[h_j(z)] for functions h_1..h_m built
from an activation f, its derivative f' and z itself.  An :class:`Integrand`
holds them piece by piece: on each open interval between f's breakpoints, one
smooth expression per h_j.  Quadrature and high precision split their
integration domain at the breakpoints; Monte Carlo evaluates each piece on the
samples that fall in its interval.  What the backends share is this
description of h, nothing of how they integrate it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache

import numpy as np
import sympy as sp

from .activation import Activation
from .errors import DiracDerivativeError
from .evaluate import Program
from .formula import X, parameter_symbol

__all__ = ["DF", "F", "Integrand", "integrand"]

_MAX_DEGREE = 12  # beyond this the moment recursion loses digits; such pieces go to panels

#: Symbols an integrand is written in: f(z) and f'(z) (and z itself, as x).
F = parameter_symbol("f")
DF = parameter_symbol("df")


@dataclass(frozen=True, eq=False)
class Integrand:
    """Functions h_1..h_m of z, smooth between ``breakpoints`` (in z)."""

    labels: tuple[str, ...]
    breakpoints: tuple[float, ...]
    pieces: tuple[tuple[sp.Expr, ...], ...]
    nonnegative: tuple[bool, ...]

    @cached_property
    def polynomials(self) -> tuple[np.ndarray | None, ...]:
        """Per piece, the coefficients (m x degree+1, lowest first) if every h_j is a polynomial in z there.

        Such pieces have exact Gaussian integrals (truncated normal moments), which the quadrature
        backend uses instead of panels.
        """
        out = []
        for exprs in self.pieces:
            try:
                polys = [sp.Poly(h, X) for h in exprs]
            except sp.PolynomialError:
                out.append(None)
                continue
            if any(not c.is_number for p in polys for c in p.coeffs()) or max(p.degree() for p in polys) > _MAX_DEGREE:
                out.append(None)
                continue
            degree = max(max(p.degree(), 0) for p in polys)
            coeffs = np.zeros((len(polys), degree + 1))
            for j, p in enumerate(polys):
                for (power,), c in p.terms():
                    coeffs[j, power] = float(c)
            out.append(coeffs)
        return tuple(out)

    @cached_property
    def numpy_pieces(self) -> tuple[Program, ...]:
        """Per piece, a numpy program computing all h_j at once."""
        return tuple(Program(exprs, (X,)) for exprs in self.pieces)

    def mpmath_pieces(self, dps: int) -> tuple[Program, ...]:
        """Per piece, an mpmath program with constants at ``dps`` digits."""
        return tuple(Program(exprs, (X,), backend="mpmath", dps=dps) for exprs in self.pieces)


def integrand(act: Activation, functions: Mapping[str, sp.Expr]) -> Integrand:
    """Describe E[h(z)] for each ``label: h`` in ``functions`` (h in f, df and x).

    Cached per activation, so repeated calls reuse the compiled programs.
    """
    return _integrand(act, tuple((label, sp.sympify(h)) for label, h in functions.items()))


@lru_cache(maxsize=256)
def _integrand(act: Activation, functions: tuple[tuple[str, sp.Expr], ...]) -> Integrand:
    exprs = tuple(h for _, h in functions)
    if act.jumps and any(h.has(DF) for h in exprs):
        raise DiracDerivativeError(
            f"{act.name} jumps {act.describe_jumps()}, so f' has a Dirac mass there and "
            "E[f'(z)^2] is infinite; expectations of f alone (mean, second moment) still exist"
        )
    pieces = tuple(
        tuple(h.subs({F: p.expression, DF: p.derivative}, simultaneous=True) for h in exprs) for p in act.pieces
    )
    nonnegative = tuple(bool(h.is_nonnegative) for h in exprs)
    return Integrand(tuple(label for label, _ in functions), act.breakpoints, pieces, nonnegative)

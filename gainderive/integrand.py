"""One integrand description shared by every backend.

For z ~ N(0, q) the backends compute E[h_j(z)] for functions h_1..h_m built
from an activation f, its derivative f' and z itself.  An :class:`Integrand`
holds them piece by piece: on each open interval between f's breakpoints, one
smooth expression per h_j.  Quadrature and high precision split their
integration domain at the breakpoints, and cut their panels at the feature
points (:mod:`gainderive.features`); Monte Carlo evaluates each piece on the
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

_MAX_DEGREE = 8  # beyond this the moment recursion loses digits; such pieces go to panels

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
    def features(self) -> tuple[tuple[float, float], ...]:
        """(centre, width) in z of the narrow features of the pieces, where panels must be cut.

        From the roots and stationary points of the polynomial arguments of every nonlinear
        function in the pieces (see :func:`gainderive.features.feature_points`); computed once.
        """
        from .features import feature_points

        return feature_points(h for exprs in self.pieces for h in exprs)

    @cached_property
    def exact_terms(self) -> tuple[dict[float, np.ndarray] | None, ...]:
        """Per piece, {a: c} with h_j(z) = sum_a sum_n c[j, n] z^n e^{a z}, or None if not of that form.

        Such pieces have exact Gaussian integrals (truncated normal moments of a
        shifted Gaussian), which the quadrature backend uses instead of panels.
        """
        out = []
        for exprs in self.pieces:
            decomposed = [_exp_polynomial(h) for h in exprs]
            if any(d is None for d in decomposed):
                out.append(None)
                continue
            exponents = sorted({a for d in decomposed for a in d})
            degree = max((n for d in decomposed for terms in d.values() for n in terms), default=0)
            table = {a: np.zeros((len(exprs), degree + 1)) for a in exponents}
            for j, d in enumerate(decomposed):
                for a, terms in d.items():
                    for n, c in terms.items():
                        table[a][j, n] += c
            out.append(table)
        return tuple(out)

    @cached_property
    def numpy_pieces(self) -> tuple[Program, ...]:
        """Per piece, a numpy program computing all h_j at once."""
        return tuple(Program(exprs, (X,)) for exprs in self.pieces)

    def mpmath_pieces(self, dps: int) -> tuple[Program, ...]:
        """Per piece, an mpmath program with constants at ``dps`` digits."""
        return tuple(Program(exprs, (X,), backend="mpmath", dps=dps) for exprs in self.pieces)


def _exp_polynomial(h: sp.Expr) -> dict[float, dict[int, float]] | None:
    """h as {a: {n: c}} meaning sum c z^n e^{a z}, or None if h is not such a finite sum.

    Decided from the tree before anything is expanded (:func:`_may_be_exp_polynomial`, and the ``terms``
    budget of :mod:`gainderive.budget`): the square of tanh's derivative nested 12 deep would expand into
    2^24 terms only to be found not of this form, ``(x + 1)**8192`` into 8,193 terms of degree far beyond
    ``_MAX_DEGREE``.  Such pieces go to panels.
    """
    from .budget import expanded_terms, in_force

    if not _may_be_exp_polynomial(h) or expanded_terms(h) > in_force().terms:
        return None
    h = sp.powsimp(sp.expand(h), combine="exp")
    # coefficients are summed exactly and rounded once: -1 + erf(3) in floats would lose five digits
    exact: dict[sp.Expr, dict[int, sp.Expr]] = {}
    for term in sp.Add.make_args(sp.expand(h)):
        coeff, power, rate = sp.S.One, 0, sp.S.Zero
        for factor in sp.Mul.make_args(term):
            if factor.is_number:
                coeff *= factor
            elif factor == X:
                power += 1
            elif factor.is_Pow and factor.base == X and factor.exp.is_Integer and factor.exp > 0:
                power += int(factor.exp)
            elif isinstance(factor, sp.exp):
                try:
                    linear = sp.Poly(factor.args[0], X)
                except sp.PolynomialError:
                    return None
                if linear.degree() > 1 or not all(c.is_number for c in linear.all_coeffs()):
                    return None
                rate += linear.coeff_monomial(X)
                coeff *= sp.exp(linear.coeff_monomial(1))
            else:
                return None
        if power > _MAX_DEGREE or not coeff.is_real:
            return None
        bucket = exact.setdefault(rate, {})
        bucket[power] = bucket.get(power, sp.S.Zero) + coeff
    return {float(rate): {n: float(c) for n, c in bucket.items()} for rate, bucket in exact.items()}


def _may_be_exp_polynomial(h: sp.Expr) -> bool:
    """A cheap necessary condition: sums, products and powers of x (degree <= _MAX_DEGREE) and exp(linear)."""
    from .budget import polynomial_degree

    def degree(e) -> float:  # the degree in z, exponentials of linear arguments counting 0; inf if not allowed
        if e == X:
            return 1.0
        if not e.args or X not in e.free_symbols:
            return 0.0
        if e.is_Add:
            return max(degree(a) for a in e.args)
        if e.is_Mul:
            return sum(degree(a) for a in e.args)
        if e.is_Pow and e.exp.is_Integer and e.exp >= 0:
            return degree(e.base) * int(e.exp)
        if isinstance(e, sp.exp) and polynomial_degree(e.args[0], X) <= 1:
            return 0.0
        return float("inf")

    return degree(h) <= _MAX_DEGREE


def integrand(act: Activation, functions: Mapping[str, sp.Expr]) -> Integrand:
    """Describe E[h(z)] for each ``label: h`` in ``functions`` (h in f, df and x).

    Cached per activation, so repeated calls reuse the compiled programs.
    """
    if not all(isinstance(h, sp.Basic) for h in functions.values()):
        raise TypeError("integrand functions must be sympy expressions (parse strings with parse_formula)")
    return _integrand(act, tuple(functions.items()))


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

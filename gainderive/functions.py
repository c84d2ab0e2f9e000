"""Special functions that activations are written in, as sympy functions.

sympy has ``erf`` and ``tanh``; it has no standard normal CDF, logistic sigmoid
or softplus.  Writing them as elementary expressions would lose numerical
stability (``log(1 + exp(x))`` overflows for x > 709) and hide structure the
closed-form integrator can use, so they are functions of their own here, each
with its derivative and a rewrite to elementary functions.
"""

from __future__ import annotations

import mpmath as mp
import sympy as sp

__all__ = ["Phi", "sigmoid", "softplus"]

_GUARD_BITS = 20


def _evalf(function, argument: sp.Expr, prec: int):
    """``function`` (an mpmath function) at ``argument``, correct to ``prec`` bits.

    sympy's evalf of the elementary rewrite loses the digits these functions are
    for: log(1 + e^{-900}) and (1 + erf(-28))/2 both come back 0 at 40 digits.
    """
    value = argument._eval_evalf(prec + _GUARD_BITS)
    if value is None or not value.is_Float:
        return None
    with mp.workprec(prec + _GUARD_BITS):
        result = function(value._to_mpmath(prec + _GUARD_BITS))
    return sp.Float._new(result._mpf_, prec) if isinstance(result, mp.mpf) else None


class Phi(sp.Function):
    r"""Standard normal CDF, :math:`\Phi(x) = \tfrac12\,(1 + \operatorname{erf}(x/\sqrt2))`."""

    nargs = 1

    @classmethod
    def eval(cls, arg):
        if arg.is_zero:
            return sp.S.Half

    def fdiff(self, argindex=1):
        return sp.exp(-self.args[0] ** 2 / 2) / sp.sqrt(2 * sp.pi)

    def _eval_rewrite_as_erf(self, arg, **kwargs):
        return (1 + sp.erf(arg / sp.sqrt(2))) / 2

    def _eval_evalf(self, prec):
        return _evalf(mp.ncdf, self.args[0], prec)

    def _eval_is_real(self):
        return self.args[0].is_real


class sigmoid(sp.Function):  # noqa: N801  (the name users write)
    r"""Logistic sigmoid, :math:`\sigma(x) = 1 / (1 + e^{-x})`."""

    nargs = 1

    @classmethod
    def eval(cls, arg):
        if arg.is_zero:
            return sp.S.Half

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0]) * (1 - sigmoid(self.args[0]))

    def _eval_rewrite_as_exp(self, arg, **kwargs):
        return 1 / (1 + sp.exp(-arg))

    def _eval_evalf(self, prec):
        return _evalf(lambda u: 1 / (1 + mp.exp(-u)), self.args[0], prec)

    def _eval_is_real(self):
        return self.args[0].is_real


class softplus(sp.Function):  # noqa: N801
    r"""Softplus, :math:`\log(1 + e^{x})`, evaluated without overflow."""

    nargs = 1

    @classmethod
    def eval(cls, arg):
        if arg.is_zero:
            return sp.log(2)

    def fdiff(self, argindex=1):
        return sigmoid(self.args[0])

    def _eval_rewrite_as_exp(self, arg, **kwargs):
        return sp.log(1 + sp.exp(arg))

    def _eval_evalf(self, prec):
        return _evalf(lambda u: mp.log1p(mp.exp(u)), self.args[0], prec)

    def _eval_is_real(self):
        return self.args[0].is_real

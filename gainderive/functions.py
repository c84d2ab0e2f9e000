"""Special functions that activations are written in, as sympy functions.

sympy has ``erf`` and ``tanh``; it has no standard normal CDF, logistic sigmoid
or softplus.  Writing them as elementary expressions would lose numerical
stability (``log(1 + exp(x))`` overflows for x > 709) and hide structure the
closed-form integrator can use, so they are functions of their own here, each
with its derivative and a rewrite to elementary functions.
"""

from __future__ import annotations

import sympy as sp

__all__ = ["Phi", "sigmoid", "softplus"]


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
        return self.rewrite(sp.erf)._eval_evalf(prec)

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
        return self.rewrite(sp.exp)._eval_evalf(prec)

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
        return self.rewrite(sp.exp)._eval_evalf(prec)

    def _eval_is_real(self):
        return self.args[0].is_real

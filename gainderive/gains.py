r"""Variance-preserving gains from the Gaussian moments (see docs/conventions.md).

With weights w ~ (0, gain^2 / fan), z ~ N(0, q) pre-activations and f the
activation, a layer preserves

* the forward signal when  fan_in Var(w) E[f(z)^2] = q:
  gain_fan_in  = sqrt(q / E[f(z)^2])  (He et al. 2015, Glorot & Bengio 2010);
* the backward signal when fan_out Var(w) E[f'(z)^2] = 1:
  gain_fan_out = 1 / sqrt(E[f'(z)^2]);
* the variance of re-centred activations when fan_in Var(w) Var f(z) = q:
  gain_variance = sqrt(q / Var f(z)).

The std of the weights is then gain / sqrt(fan).  Errors propagate to first
order: a relative error e in a moment is a relative error e/2 in its gain.

Where E[f'(z)^2] is infinite (f jumps, as sign(x); or f' is not
square-integrable, as for log|x|), gain_fan_out = 1/sqrt(inf) = 0 with the
moment's reason as its method: no weight scale preserves the backward signal,
while gain_fan_in and gain_variance exist.  :func:`gain` refuses that mode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import mpmath as mp
import numpy as np

from .errors import GainDeriveError
from .estimate import Estimate
from .moments import Moments, moments
from .suggest import Call

if TYPE_CHECKING:
    from .activation import Activation

__all__ = ["MODES", "Gains", "gain", "gains"]

#: Gain conventions: which signal a layer preserves.
MODES = ("fan_in", "fan_out", "variance")


@dataclass(frozen=True)
class Gains:
    """gain_fan_in, gain_fan_out and gain_variance, each an :class:`Estimate`."""

    fan_in: Estimate
    fan_out: Estimate
    variance: Estimate

    def __iter__(self):
        return iter((name, getattr(self, name)) for name in MODES)

    # -- notebook display: IPython calls these two (nothing here imports it) ----------------------------------
    def _repr_html_(self) -> str:
        """HTML for Jupyter: each gain's convention, value +- error and method (an undefined gain: nan and why).

        Gains of a grid of q (arrays) show the first and last :data:`~gainderive._display.DISPLAY_ROWS` entries
        with an ellipsis row between, so the text is bounded whatever the grid.  Every string is HTML-escaped.
        """
        from ._display import (
            _ERROR_NOTE,
            _GAIN_LABELS,
            _at,
            _error,
            _finite,
            _html,
            _html_cell,
            _html_table,
            _number,
            _rows_note,
            _shown_rows,
        )

        shape = np.broadcast_shapes(*(np.shape(est.value) for _, est in self))
        if not shape:
            rows = [[_GAIN_LABELS[name][0], _html(_number(est.value)),
                     _html(_error(est.error)) if _finite(est.value) else "", _html(est.method)] for name, est in self]
            table = _html_table(["gain", "value", "&plusmn; error", "method"], rows, 0)
            note = ""
        else:
            n = math.prod(shape)
            rows = [None if i is None else
                    [str(i), *(_html_cell(_at(est.value, shape, i), _at(est.error, shape, i)) for _, est in self)]
                    for i in _shown_rows(n)]
            head = [["method", *(_html(est.method) for _, est in self)]]
            table = _html_table(["index", *(_GAIN_LABELS[name][0] for name in MODES)], rows,
                                n - sum(row is not None for row in rows), head=head)
            note = _rows_note(n)
        note = f"<p>{n:,} gains per mode ({note})</p>\n" if note else ""
        return (f'<div class="gainderive-gains">\n{note}{table}\n<p><small>{_ERROR_NOTE}; std = gain / sqrt(fan)'
                "</small></p>\n</div>")

    def _repr_latex_(self) -> str:
        r"""LaTeX for Jupyter: each gain as its formula = value \pm error, with its method.

        Gains of a grid of q: the formulas and methods, then an array of the first and last
        :data:`~gainderive._display.DISPLAY_ROWS` entries.  Methods (which may quote a formula) are escaped.
        """
        from ._display import (
            _GAIN_LABELS,
            _at,
            _latex_array,
            _latex_cell,
            _latex_display,
            _latex_number,
            _latex_text,
            _number,
            _rows_note,
            _shown_rows,
        )

        shape = np.broadcast_shapes(*(np.shape(est.value) for _, est in self))
        lines = []
        for name, est in self:
            label, method = _GAIN_LABELS[name][1], _latex_text(est.method)
            value = "" if shape else f" = {_latex_cell(est.value, est.error)}"
            lines.append(rf"{label.replace(' = ', ' &= ', 1)}{value} && {method}")
        block = r"\begin{aligned}" + "\n" + " \\\\\n".join(lines) + "\n" + r"\end{aligned}"
        if not shape:
            return _latex_display([block])
        n = math.prod(shape)
        rows = [None if i is None else [str(i), *(_latex_number(_number(_at(est.value, shape, i))) for _, est in self)]
                for i in _shown_rows(n)]
        array = _latex_array(["i", *(_GAIN_LABELS[name][1].split(" = ")[0] for name in MODES)], rows)
        note = _rows_note(n)
        return _latex_display([block, array, *([rf"\text{{{note}}}"] if note else [])])


def _inverse_sqrt_gain(scale: Any, moment: Estimate, what: str, why: str, mode: str, strict: bool) -> Estimate:
    """sqrt(scale / moment) (one rounding fewer than sqrt(scale)/sqrt(moment)), with relative error halved.

    A moment <= 0 (f constant, or a variance below double precision's reach) has no gain: an error, or with
    ``strict=False`` the value nan and the reason as the method ("undefined: ...").
    """
    value, error = moment.value, moment.error
    if isinstance(value, mp.mpf):  # high precision (an infinite moment keeps its reason as the method)
        if value <= 0:
            return _no_gain(f"{what} = {mp.nstr(value, 3)} ({why}), so gain_{mode} does not exist", strict, mp.nan)
        g = mp.sqrt(scale / value)
        return Estimate(g, g * error / (2 * value), moment.method)
    v = np.asarray(value, dtype=float)
    if np.any(v <= 0):
        shown = float(v.ravel()[np.argmin(v.ravel())])
        return _no_gain(f"{what} = {shown:.3g} ({why}), so gain_{mode} does not exist", strict,
                        np.full_like(v, np.nan)[()])
    g = np.sqrt(np.asarray(scale, dtype=float) / v)
    return Estimate(g[()], (g * np.asarray(error) / (2 * v))[()], moment.method)


def _no_gain(reason: str, strict: bool, nan: Any) -> Estimate:
    if strict:
        raise GainDeriveError(reason)
    return Estimate(nan, nan, f"undefined: {reason}")


def gains(m: Moments, *, strict: bool = True) -> Gains:
    """The three gains from computed moments.

    A gain whose moment is 0 does not exist: a :class:`GainDeriveError`, or with ``strict=False`` an
    :class:`Estimate` of nan whose method starts "undefined: " and gives the reason (so the other two
    gains are still reported).
    """
    if m.digits is not None:
        with mp.workdps(m.digits + 10):
            return _gains(m, strict)
    return _gains(m, strict)


def _gains(m: Moments, strict: bool) -> Gains:
    q = m.q
    # a variance of 0 within its bar may be a non-constant f whose variance is below double precision's reach
    return Gains(
        fan_in=_inverse_sqrt_gain(q, m.second_moment, "E[f(z)^2]", "f vanishes almost surely", "fan_in", strict),
        fan_out=_inverse_sqrt_gain(1, m.derivative_second_moment, "E[f'(z)^2]", "f is constant", "fan_out", strict),
        variance=_inverse_sqrt_gain(q, m.variance, "Var f(z)", "f is constant almost surely, or its variance is "
                                    "below double precision's reach", "variance", strict),
    )


_GAIN_CALL = Call("gain(activation, variance=1.0, mode='fan_in', method='auto', **params)",
                  ("variance", "mode", "method"), "use gains(moments(activation, variance, method, {given}))")


def gain(
    activation: str | Activation,
    variance: Any = 1.0,
    mode: str = "fan_in",
    method: str = "auto",
    **params: Any,
) -> Any:
    """The variance-preserving gain of ``activation`` at input variance q.

    ``mode`` is ``"fan_in"`` (forward, sqrt(q / E[f^2])), ``"fan_out"``
    (backward, 1 / sqrt(E[f'^2])) or ``"variance"`` (sqrt(q / Var f)).

    ``params`` are the activation's parameters; a keyword that is not one gets a hint naming what it is
    (``gain("gelu", q=2)``: the input variance is ``variance=2``).

    >>> round(float(gain("relu")), 15) == round(2 ** 0.5, 15)
    True
    """
    if mode not in MODES:
        from .suggest import accepted, did_you_mean

        raise GainDeriveError(f"unknown mode {mode!r}{accepted(did_you_mean(mode, MODES), MODES)}")
    if params:  # names first, with this function's keywords in the hints; moments() binds the values
        from .registry import build

        build(activation, params, call=_GAIN_CALL)
    m = moments(activation, variance, method, **params)
    if mode == "fan_out":
        refuse_infinite_derivative(m, 'mode="fan_out"', 'mode="fan_in" or mode="variance"')
    return getattr(gains(m), mode).value


def refuse_infinite_derivative(m: Moments, what: str, instead: str) -> None:
    """GainDeriveError naming why ``what`` needs a finite E[f'(z)^2] when it is infinite at some q of ``m``."""
    d = m.derivative_second_moment
    if np.any(np.isinf(np.asarray(d.value, dtype=float))):
        reason = d.method.split("infinite: ", 1)[-1]
        raise GainDeriveError(f"{what} needs E[f'(z)^2], which is infinite for {m.activation.name} ({reason}); "
                              f"use {instead}")

"""The activation model: a declarative record and its piecewise structure.

An :class:`Activation` is a formula in ``x`` (the whitelist language of
:mod:`gainderive.formula`), parameters with values, and where it comes from.
From the formula alone it derives what every backend needs:

* the breakpoints: the real roots of every condition of ``where``/``Piecewise``
  and of the kinks of ``max``, ``min``, ``abs``, ``clip``, ``sign`` and
  ``Heaviside``;
* the pieces: on each open interval between breakpoints, one smooth expression
  (no conditionals left) and its derivative;
* the jumps: breakpoints where f is discontinuous, so f' has a Dirac mass.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache, cached_property
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .errors import FormulaError

if TYPE_CHECKING:
    import sympy as sp

    from .formula import Macro, Parsed

__all__ = ["Activation", "Jump", "Piece"]


@dataclass(frozen=True)
class Piece:
    """f restricted to the open interval (lower, upper) of the pre-activation z."""

    lower: float
    upper: float
    expression: sp.Expr
    derivative: sp.Expr


@dataclass(frozen=True)
class Jump:
    """A discontinuity of f at z = ``at``: f(at+) - f(at-) = ``size``."""

    at: float
    size: float


@dataclass(frozen=True, eq=False)
class Activation:
    """An activation function f(x) with bound parameters.

    A light record: the symbolic work (parsing, breakpoints, pieces) happens on
    first use of the properties that need it, in :mod:`gainderive._structure`.

    Parameters
    ----------
    name:
        Registry name, or the formula itself for user formulas.
    formula:
        Expression in ``x`` and the parameter names (see ``docs/formulas.md``).
    params:
        Parameter values: exact sympy numbers, or exact decimal strings (the
        registry's defaults).
    reference:
        The paper the activation comes from.
    constraints:
        Conditions on the parameters in formula syntax, e.g. ``"beta > 0"``.
    """

    name: str
    formula: str
    params: Mapping[str, Any] = field(default_factory=dict)
    reference: str = ""
    description: str = ""
    aliases: tuple[str, ...] = ()
    constraints: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "params", MappingProxyType(dict(self.params)))

    @property
    def parameter_values(self) -> dict[str, float]:
        """Parameter values as floats (for display and JSON)."""
        return {k: float(v) for k, v in self.params.items()}

    @cached_property
    def symbolic_expression(self) -> sp.Expr:
        """f(x) with parameters as symbols."""
        return parse_activation_formula(self.formula).expression

    @cached_property
    def expression(self) -> sp.Expr:
        """f(x) with the parameter values substituted (exact), unstable patterns in their stable forms."""
        from ._structure import substitute
        from .rewrite import stable

        # again after substitution: log(a + exp(x)) is a softplus only once a > 0 is known
        return stable(substitute(self.symbolic_expression, self.params))

    @cached_property
    def derivative(self) -> sp.Expr:
        """f'(x) on the whole line, defined almost everywhere (piece by piece)."""
        from ._structure import derivative

        return derivative(self.pieces, self.exact_breakpoints)

    @cached_property
    def _normalized(self) -> sp.Expr:
        from ._structure import normalized

        return normalized(self.expression, self.name, self.parameter_values)

    @cached_property
    def exact_breakpoints(self) -> tuple[sp.Expr, ...]:
        """Sorted distinct real breakpoints, as exact sympy numbers."""
        from ._structure import breakpoints

        return breakpoints(self._normalized)

    @cached_property
    def breakpoints(self) -> tuple[float, ...]:
        """Sorted breakpoints of f (kinks and jumps) as floats."""
        return tuple(float(b) for b in self.exact_breakpoints)

    @cached_property
    def pieces(self) -> tuple[Piece, ...]:
        """The smooth pieces of f between consecutive breakpoints."""
        from ._structure import pieces

        return pieces(self._normalized, self.exact_breakpoints, Piece)

    @cached_property
    def jumps(self) -> tuple[Jump, ...]:
        """Breakpoints where f is discontinuous (f' has a Dirac mass there)."""
        from ._structure import jumps

        return jumps(self.exact_breakpoints, self.pieces, Jump)

    def describe_jumps(self) -> str:
        """One phrase naming each jump, for error messages."""
        return ", ".join(f"by {j.size:.6g} at z = {j.at:.6g}" for j in self.jumps)


# -- the registry's entries: named activations, callable inside any formula ----------------------------------------
_SELU_ALPHA = "1.6732632423543772848170429916717"
_SELU_SCALE = "1.0507009873554804934193349852946"


def _entry(name, formula, params=None, reference="", description="", aliases=(), constraints=()):
    return Activation(
        name=name,
        formula=formula,
        params=dict(params or {}),  # exact decimal strings; sympy numbers once an activation is built
        reference=reference,
        description=description,
        aliases=tuple(aliases),
        constraints=tuple(constraints),
    )


_ENTRIES = (
    _entry("identity", "x", reference="LeCun et al. 1998, Efficient BackProp", description="f(x) = x",
           aliases=("linear",)),
    _entry("relu", "max(x, 0)", reference="Nair & Hinton 2010, ICML; He et al. 2015, arXiv:1502.01852",
           description="rectified linear unit"),
    _entry("leaky_relu", "where(x > 0, x, negative_slope*x)", {"negative_slope": "0.01"},
           reference="Maas, Hannun & Ng 2013, ICML workshop", description="leaky ReLU"),
    _entry("prelu", "where(x > 0, x, a*x)", {"a": "0.25"},
           reference="He et al. 2015, arXiv:1502.01852", description="parametric ReLU (initial slope a)"),
    _entry("elu", "where(x > 0, x, alpha*expm1(x))", {"alpha": "1"},
           reference="Clevert, Unterthiner & Hochreiter 2016, arXiv:1511.07289", description="exponential linear unit"),
    _entry("selu", "scale*where(x > 0, x, alpha*expm1(x))", {"alpha": _SELU_ALPHA, "scale": _SELU_SCALE},
           reference="Klambauer et al. 2017, arXiv:1706.02515", description="scaled ELU (self-normalising)"),
    _entry("celu", "where(x > 0, x, alpha*expm1(x/alpha))", {"alpha": "1"},
           reference="Barron 2017, arXiv:1704.07483", description="continuously differentiable ELU",
           constraints=("abs(alpha) > 0",)),
    _entry("gelu", "x*Phi(x)", reference="Hendrycks & Gimpel 2016, arXiv:1606.08415",
           description="Gaussian error linear unit, exact x*Phi(x)"),
    _entry("gelu_tanh", "x/2*(1 + tanh(sqrt(2/pi)*(x + 0.044715*x**3)))",
           reference="Hendrycks & Gimpel 2016, arXiv:1606.08415", description="GELU, tanh approximation"),
    _entry("silu", "x*sigmoid(x)", reference="Elfwing, Uchibe & Doya 2018, arXiv:1702.03118; "
           "Ramachandran, Zoph & Le 2017, arXiv:1710.05941", description="sigmoid-weighted linear unit",
           aliases=("swish",)),
    _entry("mish", "x*tanh(softplus(x))", reference="Misra 2019, arXiv:1908.08681", description="Mish"),
    _entry("softplus", "softplus(beta*x)/beta", {"beta": "1"},
           reference="Dugas et al. 2001, NeurIPS", description="log(1 + exp(beta*x))/beta, exact (no threshold)",
           constraints=("beta > 0",)),
    _entry("tanh", "tanh(x)", reference="LeCun et al. 1998, Efficient BackProp", description="hyperbolic tangent"),
    _entry("sigmoid", "sigmoid(x)", reference="Rumelhart, Hinton & Williams 1986, Nature",
           description="logistic sigmoid"),
    _entry("erf", "erf(x)", reference="Williams 1997, NeurIPS (arcsine kernel)", description="error function"),
    _entry("softsign", "x/(1 + abs(x))", reference="Bergstra et al. 2009; Glorot & Bengio 2010, AISTATS",
           description="x / (1 + |x|)"),
    _entry("hardtanh", "clip(x, min_val, max_val)", {"min_val": "-1", "max_val": "1"},
           reference="Collobert 2004, PhD thesis", description="clip(x, min_val, max_val)",
           constraints=("max_val > min_val",)),
    _entry("relu6", "clip(x, 0, 6)", reference="Krizhevsky 2010, Convolutional deep belief networks on CIFAR-10",
           description="min(max(x, 0), 6)"),
    _entry("hardsigmoid", "clip(x/6 + 1/2, 0, 1)", reference="Howard et al. 2019, arXiv:1905.02244",
           description="relu6(x + 3)/6"),
    _entry("hardswish", "x*clip(x + 3, 0, 6)/6", reference="Howard et al. 2019, arXiv:1905.02244",
           description="x * relu6(x + 3)/6"),
    _entry("sin", "sin(x)", reference="Sitzmann et al. 2020, arXiv:2006.09661 (SIREN)", description="sine"),
    _entry("abs", "abs(x)", reference="Jarrett et al. 2009, ICCV", description="absolute value"),
)

#: Registry name -> activation with default parameters (expression filled in on first use).
REGISTRY: dict[str, Activation] = {a.name: a for a in _ENTRIES}
_ALIASES = {alias: a.name for a in _ENTRIES for alias in a.aliases}


def _macro(entry: Activation) -> Macro:
    import sympy as sp

    from ._structure import exact
    from .formula import Macro, X, parameter_symbol, parse_formula

    def build(argument: sp.Expr, params: Mapping[str, sp.Expr]) -> tuple[sp.Expr, tuple]:
        values = {parameter_symbol(k): params.get(k, exact(v)) for k, v in entry.params.items()}
        pending = []
        for text in entry.constraints:
            cond = _condition(text).subs(values, simultaneous=True)
            if cond is sp.false or cond == sp.false:
                shown = ", ".join(f"{k}={v}" for k, v in params.items())
                raise FormulaError(f"{entry.name}() requires {text}; got {shown}")
            if cond is not sp.true and cond != sp.true:
                pending.append(cond)  # depends on the formula's own parameters: checked when they are bound
        # registry formulas call primitives only, so this parse never recurses into macros
        expression = parse_formula(entry.formula).subs(values, simultaneous=True).subs(X, argument)
        return expression, tuple(pending)

    return Macro(tuple(entry.params), build)


@cache
def _macros() -> dict[str, Macro]:
    macros = {name: _macro(entry) for name, entry in REGISTRY.items()}
    macros.update({alias: macros[name] for alias, name in _ALIASES.items()})
    return macros


@cache
def parse_activation_formula(text: str) -> Parsed:
    """Parse a formula in which registry names may be called as functions.

    The expression comes back with the numerically unstable patterns people type
    (``log(1 + exp(x))``, ``x/(1 + exp(-x))``, ...) in their stable forms
    (:func:`gainderive.rewrite.stable`, an identity).
    """
    from .formula import Parsed, parse
    from .rewrite import stable

    parsed = parse(text, macros=_macros())
    return Parsed(stable(parsed.expression), parsed.conditions)


@cache
def _condition(text: str):
    # constraints are written by us in formula syntax: where(cond, 1, 0) parses the condition
    from .formula import parse_formula

    return parse_formula(f"where({text}, 1, 0)").args[0].cond

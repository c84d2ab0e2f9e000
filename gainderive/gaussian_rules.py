r"""Deriving closed forms of Gaussian moments by rules rather than by ``sympy.integrate``.

For z ~ N(0, q) and a piecewise activation, every moment is a sum over pieces
(lo, hi) of E[h(z) 1{lo < z < hi}].  On each piece h is expanded into terms

.. math::  c \; z^n \; e^{c_2 z^2 + c_1 z} \; \prod_i \Phi(a_i z + b_i),

and each term is integrated by the standard results (Owen 1980, "A table of
normal integrals"; Johnson, Kotz & Balakrishnan 1994, ch. 13):

* completing the square turns the weight φ_q(z) e^{c_2 z^2 + c_1 z} into a
  constant times a normal density N(μ, v), 1/v = 1/q - 2 c_2, μ = v c_1;
* without Φ factors, truncated moments of N(μ, v) by the recursion
  M_n = μ M_{n-1} + v (n-1) M_{n-2} + v [lo^{n-1} φ_v(lo-μ) - hi^{n-1} φ_v(hi-μ)];
* with Φ factors (whole line only), Stein's lemma E[z g(z)] = μ E[g] + v E[g'],
  where each derivative φ(a z + b) merges into the normal density again, down
  to E[Φ(a z + b)] = Φ((a μ + b)/\sqrt{1 + a^2 v}) and, for two factors with
  a_i μ + b_i = 0, the orthant probability 1/4 + \arcsin(ρ)/(2π).

erf is 2Φ(\sqrt2 x) - 1; sin and cos are complex exponentials (whole line only).
Anything else (a Φ factor on a truncated piece, tanh, the sigmoid) has no
closed form here and raises :class:`NoClosedFormError`; the caller falls back to
quadrature.  Nothing here is trusted as derived: :mod:`gainderive.verify`, a layer
above both this module and the numeric backends, checks each form against
quadrature before any result uses it (this module imports neither).  Parameters
and q stay symbolic; breakpoints may depend on the parameters (their order is
that at the activation's parameter values).
"""

from __future__ import annotations

from functools import lru_cache

import sympy as sp

from .activation import Activation
from .budget import Budget, SymbolicBudgetError, expanded_terms, tree_size
from .closed_form import ClosedForm, Q
from .formula import X, parameter_symbol
from .functions import Phi

__all__ = ["NoClosedFormError", "closed_forms", "skipped", "stable"]

_MAX_TERMS = 400


class NoClosedFormError(Exception):
    """The integrand is outside the class the rules cover."""


# what "the rules do not apply" looks like: ours, or sympy declining an expression the rules did not expect
_NO_RULE = (NoClosedFormError, sp.PolynomialError, TypeError, ValueError, NotImplementedError, ArithmeticError,
            RecursionError)


def _form(moment: str, expression: sp.Expr, budget: Budget | None = None) -> ClosedForm:
    if budget is not None:
        budget.check("printing the form")
    form = ClosedForm(moment, str(_to_erfc(expression)), sp.latex(expression))
    form.__dict__["expression"] = expression
    return form


def _to_erfc(expr: sp.Expr) -> sp.Expr:
    return expr.replace(Phi, lambda u: sp.erfc(-u / sp.sqrt(2)) / 2)


# -- the symbolic piecewise structure ----------------------------------------------------------------------------
def _symbolic_pieces(act: Activation, budget: Budget):
    """[(lo, hi, f_piece)] with parameters symbolic; branch choices and order from the numeric parameters.

    The same inside-out analysis as the activation's own pieces (:func:`gainderive._structure.cut_points`),
    with the breakpoints kept as expressions in the parameters; never ``rewrite(Piecewise)``, whose folding
    of nested conditionals grows as 2^depth.
    """
    from ._structure import NonlinearBreakpointError, cut_points, exact, restrict, sample_points

    if len(act.pieces) > budget.limits.closed_form_pieces:  # the numeric structure is known already: cheap
        raise budget.refuse(f"the activation has {len(act.pieces)} pieces", "closed_form_pieces")
    values = {parameter_symbol(k): exact(v) for k, v in act.params.items()}
    expr = act.symbolic_expression
    try:
        cuts = cut_points(expr, values, budget)
    except NonlinearBreakpointError as exc:
        raise NoClosedFormError(str(exc)) from None
    bounds_sym = [-sp.oo, *(c for c, _ in cuts), sp.oo]
    samples = sample_points([v for _, v in cuts], [c.subs(values) for c, _ in cuts])
    return [(lo, hi, restrict(expr, point, values)) for lo, hi, point in zip(bounds_sym, bounds_sym[1:], samples)]


# -- Gaussian integrals of one piece -----------------------------------------------------------------------------
def _phi_density(x, v):
    return sp.exp(-x**2 / (2 * v)) / sp.sqrt(2 * sp.pi * v)


def _moment(n: int, phis: tuple, mu, v, lo, hi):
    """int_lo^hi x^n prod_i Phi(a_i x + b_i) phi_v(x - mu) dx."""
    if not phis:
        return _truncated(n, mu, v, lo, hi)
    if lo != -sp.oo or hi != sp.oo:
        raise NoClosedFormError("Phi of a linear argument on a truncated piece (a bivariate normal integral)")
    if n > 0:  # Stein: E[x g] = mu E[g] + v E[g'], g = x^{n-1} prod Phi
        total = mu * _moment(n - 1, phis, mu, v, lo, hi)
        if n > 1:
            total += v * (n - 1) * _moment(n - 2, phis, mu, v, lo, hi)
        for i, (a, b) in enumerate(phis):
            total += v * a * _with_density(n - 1, phis[:i] + phis[i + 1:], a, b, mu, v, lo, hi)
        return total
    if len(phis) == 1:
        (a, b), = phis
        return Phi((a * mu + b) / sp.sqrt(1 + a**2 * v))
    if len(phis) == 2:
        (a1, b1), (a2, b2) = phis
        if sp.simplify(a1 * mu + b1) != 0 or sp.simplify(a2 * mu + b2) != 0:
            raise NoClosedFormError("a product of Phi with off-centre arguments (Owen's T function)")
        rho = a1 * a2 * v / sp.sqrt((1 + a1**2 * v) * (1 + a2**2 * v))
        return sp.Rational(1, 4) + sp.asin(rho) / (2 * sp.pi)
    raise NoClosedFormError("more than two Phi factors")


def _with_density(n, phis, a, b, mu, v, lo, hi):
    """int x^n prod Phi * phi(a x + b) phi_v(x - mu) dx: the two densities make one normal density."""
    v2 = 1 / (a**2 + 1 / v)
    mu2 = v2 * (mu / v - a * b)
    scale = sp.sqrt(v2 / v) / sp.sqrt(2 * sp.pi) * sp.exp(mu2**2 / (2 * v2) - (b**2 + mu**2 / v) / 2)
    return scale * _moment(n, phis, mu2, v2, lo, hi)


def _truncated(n: int, mu, v, lo, hi):
    """int_lo^hi x^n phi_v(x - mu) dx by the truncated normal moment recursion."""
    s = sp.sqrt(v)

    def cdf(c):
        return sp.S.Zero if c == -sp.oo else sp.S.One if c == sp.oo else Phi((c - mu) / s)

    def edge(c, k):
        return sp.S.Zero if c in (sp.oo, -sp.oo) else c**k * _phi_density(c - mu, v)

    # a difference of the smaller tails: Phi(-x) rather than 1 - Phi(x), the same number without cancelling
    if hi == sp.oo:
        mass = sp.S.One if lo == -sp.oo else Phi((mu - lo) / s)
    elif lo != -sp.oo and (lo - mu).is_nonnegative:
        mass = Phi((mu - lo) / s) - Phi((mu - hi) / s)
    else:
        mass = cdf(hi) - cdf(lo)
    moments = [mass]
    for k in range(1, n + 1):
        previous = moments[k - 2] if k >= 2 else sp.S.Zero
        moments.append(mu * moments[k - 1] + v * (k - 1) * previous + v * (edge(lo, k - 1) - edge(hi, k - 1)))
    return moments[n]


def _term(term: sp.Expr, lo, hi):
    """E[term 1{lo < z < hi}], z ~ N(0, q), for one product term."""
    coeff, power, quad, lin, phis = sp.S.One, 0, sp.S.Zero, sp.S.Zero, []
    for factor in sp.Mul.make_args(term):
        base, exponent = factor.as_base_exp()
        if not factor.has(X):
            coeff *= factor
        elif factor == X or (base == X and exponent.is_Integer and exponent > 0):
            power += 1 if factor == X else int(exponent)
        elif isinstance(factor, sp.exp):
            poly = sp.Poly(sp.expand(factor.args[0]), X)
            if poly.degree() > 2:
                raise NoClosedFormError("exp of more than a quadratic")
            quad += poly.coeff_monomial(X**2)
            lin += poly.coeff_monomial(X)
            coeff *= sp.exp(poly.coeff_monomial(1))
        elif isinstance(base, Phi) and exponent.is_Integer and exponent > 0:
            poly = sp.Poly(sp.expand(base.args[0]), X)
            if poly.degree() != 1:
                raise NoClosedFormError("Phi of a non-linear argument")
            phis.extend([(poly.coeff_monomial(X), poly.coeff_monomial(1))] * int(exponent))
        else:
            raise NoClosedFormError(f"no rule for {factor}")
    # phi_q(z) e^{quad z^2 + lin z} = scale * phi_v(z - mu)
    v = 1 / (1 / Q - 2 * quad)
    if quad != 0 and not sp.simplify(1 / Q - 2 * quad).is_positive:
        raise NoClosedFormError("the integrand grows like a Gaussian: the expectation may diverge")
    mu = v * lin
    scale = sp.sqrt(v / Q) * sp.exp(lin**2 * v / 2)
    return coeff * scale * _moment(power, tuple(phis), mu, v, lo, hi)


def _rewrite(h: sp.Expr, whole_line: bool) -> sp.Expr:
    """h in the rules' vocabulary: erf -> Phi, and sin/cos -> complex exponentials on the whole line."""
    h = h.replace(sp.erf, lambda u: 2 * Phi(sp.sqrt(2) * u) - 1).replace(sp.erfc, lambda u: 2 * Phi(-sp.sqrt(2) * u))
    if h.has(sp.sin, sp.cos, sp.sinh, sp.cosh):
        if not whole_line and h.has(sp.sin, sp.cos):
            raise NoClosedFormError("trigonometric function on a truncated piece")
        h = h.rewrite(sp.exp)
    return h


def piece_expectation(h: sp.Expr, lo, hi, budget: Budget | None = None) -> sp.Expr:
    """E[h(z) 1{lo < z < hi}] for z ~ N(0, q) in closed form: the rules, else sympy within a time limit.

    ``budget`` (one per activation, see :mod:`gainderive.budget`) bounds the expansion before it is made and
    the time spent; exceeding it raises :class:`~gainderive.budget.SymbolicBudgetError`.
    """
    budget = budget or Budget("closed form skipped", "closed_form_seconds")
    try:
        rewritten = _rewrite(h, lo == -sp.oo and hi == sp.oo)
        once = budget.expand(rewritten, "expanding a piece's integrand")
        expanded = budget.expand(sp.powsimp(once, combine="exp"), "expanding a piece's integrand")
        terms = sp.Add.make_args(expanded)
        if len(terms) > _MAX_TERMS:
            raise NoClosedFormError("too many terms")
        out = []
        for t in terms:
            budget.check("integrating a piece term by term")
            out.append(_term(t, lo, hi))
        return sp.Add(*out)
    except NoClosedFormError:
        return _sympy_integral(h, lo, hi, budget)


SYMPY_SECONDS = 1.0
# functions whose products with a Gaussian sympy does not integrate in closed form: not worth the wait
_HOPELESS = (sp.tanh, sp.log, sp.atan, sp.asinh, sp.Abs, sp.sign)


class _OutOfTimeError(BaseException):
    """Raised by the timer.  A BaseException, so sympy's own ``except Exception`` clauses cannot swallow it."""


def _sympy_integral(h: sp.Expr, lo, hi, budget: Budget | None = None) -> sp.Expr:
    """sympy.integrate as a last resort, interrupted after SYMPY_SECONDS; its answer is verified like ours.

    The SIGALRM timer is only the backstop here (it cannot interrupt C code, nor run off the main thread):
    the call is not made at all for an integrand whose expansion exceeds the budget, and the timer is set to
    the smaller of SYMPY_SECONDS and what remains of the activation's time budget.
    """
    import signal
    import threading

    from .functions import sigmoid, softplus

    if h.has(*_HOPELESS, sigmoid, softplus) or threading.current_thread() is not threading.main_thread():
        raise NoClosedFormError("no rule, and sympy cannot integrate this against a Gaussian")
    budget = budget or Budget("closed form skipped", "closed_form_seconds")
    budget.check("sympy.integrate")
    if expanded_terms(h) > budget.limits.terms:
        raise NoClosedFormError("too large for sympy.integrate")
    seconds = min(SYMPY_SECONDS, budget.remaining())

    def out_of_time(*_):
        raise _OutOfTimeError

    previous = signal.signal(signal.SIGALRM, out_of_time)

    def stop():
        signal.signal(signal.SIGALRM, signal.SIG_IGN)  # first, so no tick lands while the timer is disarmed
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)

    # repeating: a signal that lands in a gc callback has its exception printed and dropped ("Exception
    # ignored in ..."), which once let sympy.integrate run on for hours; the next tick raises again
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3), 0.1)
    try:
        try:
            density = sp.exp(-X**2 / (2 * Q)) / sp.sqrt(2 * sp.pi * Q)
            result = sp.integrate(h.rewrite(sp.erf) * density, (X, lo, hi))
        finally:
            stop()
    except _OutOfTimeError:  # from the integration, or a tick that landed as the timer was being stopped
        stop()
        budget.check("sympy.integrate")
        raise NoClosedFormError(f"sympy found no closed form within {seconds:g} s") from None
    if result.has(sp.Integral, sp.Piecewise, sp.nan, sp.zoo):
        raise NoClosedFormError("sympy left the integral unevaluated")
    return result


# -- moments -----------------------------------------------------------------------------------------------------
def _tidy(expr: sp.Expr, budget: Budget) -> sp.Expr:
    """Cheap simplifications that keep the form readable (a full simplify() can take minutes).

    sympy's rewriting has bugs of its own (collect() once turned sqrt(2)/(2 sqrt(pi)) into
    exp(2/log(2)) exp(-2/log(pi))), so the tidied form is kept only if it agrees with the raw one
    at a few points.
    """
    if tree_size(expr, budget.limits.operations) > budget.limits.operations:
        raise budget.refuse(f"the derived form has more than {budget.limits.operations:,} operations",
                            "operations")
    if expr.has(sp.I):
        budget.expand(expr, "taking the real part")
        raw = sp.expand_complex(expr)
    else:
        raw = expr
    # term by term (what powsimp and powdenest do with a sum anyway), so that the deadline is checked between
    # terms; an integer power of a sum (the mean squared in the variance) is expanded first, since powdenest's
    # sign queries on the sum itself find the real roots of a polynomial in q (18 s for ((x + 1)**8)**8)
    parts = []
    for term in sp.Add.make_args(raw):
        budget.check("tidying the form")
        if any(p.base.is_Add and p.exp.is_Integer for p in term.atoms(sp.Pow)):
            pieces = sp.Add.make_args(budget.expand(term, "tidying the form"))
        else:
            pieces = (term,)
        for piece in pieces:
            budget.check("tidying the form")
            parts.append(sp.powsimp(sp.powdenest(piece), combine="exp"))
    tidy = budget.expand(sp.Add(*parts), "tidying the form")
    budget.check("tidying the form")
    if sp.count_ops(tidy) <= 60:  # small enough for simplify() to be quick; keep it only if it is shorter
        simpler = sp.simplify(tidy)
        if sp.count_ops(simpler) < sp.count_ops(tidy):
            tidy = simpler
    chosen = tidy if _agree(raw, tidy) else raw
    if chosen.has(sp.I):  # a complex intermediate expand_complex could not remove: no real form to show or verify
        raise NoClosedFormError("the derived form is not real term by term")
    return chosen


def _agree(raw: sp.Expr, tidy: sp.Expr) -> bool:
    """Whether two forms agree to 1e-20 at two rational points, evaluated at 30 digits.

    By the mpmath straight-line program (:class:`~gainderive.evaluate.Program`) where it can evaluate both: sympy's
    evalf of a form full of Phi and square roots, and sympy's comparison of the results, took ~0.5 s per form.  A
    form it cannot evaluate (a complex intermediate left by expand_complex) is evaluated by sympy, and the
    comparison is still made in mpmath.
    """
    import mpmath as mp

    from .errors import GainDeriveError
    from .evaluate import Program

    symbols = sorted(raw.free_symbols | tidy.free_symbols, key=sp.default_sort_key)
    points = [[sp.Rational(3, 7) + sp.Rational(k, 13) for k in range(len(symbols))],
              [sp.Rational(11, 5) + sp.Rational(k, 13) for k in range(len(symbols))]]
    with mp.workdps(30):
        try:
            program = Program([raw, tidy], symbols, backend="mpmath", dps=30)
            pairs = [program(*(mp.mpf(v.p) / v.q for v in point)) for point in points]
        except (GainDeriveError, ArithmeticError, TypeError, ValueError):
            pairs = []
            for point in points:
                values = dict(zip(symbols, point))
                a, b = sp.N(raw.subs(values), 30), sp.N(tidy.subs(values), 30)
                if not (a.is_number and b.is_number):
                    return False
                try:
                    pairs.append((a._to_mpmath(110), b._to_mpmath(110)))  # bits: 30 digits and guard
                except (TypeError, ValueError, AttributeError):
                    return False
        for a, b in pairs:
            if not (mp.isfinite(a) and mp.isfinite(b)) or abs(a - b) > mp.mpf("1e-20") * (1 + abs(a)):
                return False
    return True


def closed_forms(act: Activation) -> dict[str, ClosedForm | None]:
    """Closed forms of mean, second_moment, derivative_second_moment and variance (None where there is none)."""
    return _derived(act)[0]


def skipped(act: Activation) -> dict[str, str]:
    """{moment: why} for the moments whose derivation was stopped by a symbolic budget (see gainderive.budget)."""
    return _derived(act)[1]


_MOMENTS = ("mean", "second_moment", "derivative_second_moment", "variance")


@lru_cache(maxsize=128)
def _derived(act: Activation) -> tuple[dict[str, ClosedForm | None], dict[str, str]]:
    """(forms, skipped): the forms, and for each moment a budget stopped, the budget's one-line reason.

    One :class:`~gainderive.budget.Budget` per activation (``closed_form_seconds``, and the size budgets before
    every expansion): a hard activation in a batch cannot use up the time of the next one.
    """
    budget = Budget("closed form skipped", "closed_form_seconds")
    out: dict[str, ClosedForm | None] = dict.fromkeys(_MOMENTS)
    stopped: dict[str, str] = {}
    try:
        pieces = _symbolic_pieces(act, budget)
    except SymbolicBudgetError as exc:  # first: it is a GainDeriveError, hence a ValueError, as in _NO_RULE
        return out, dict.fromkeys(_MOMENTS, str(exc))
    except _NO_RULE:
        return out, stopped
    for name, power, derivative in (("mean", 1, False), ("second_moment", 2, False),
                                    ("derivative_second_moment", 2, True)):
        if derivative and act.jumps:
            continue
        try:
            total = sp.S.Zero
            for lo, hi, f in pieces:
                g = sp.diff(f, X) if derivative else f
                total += piece_expectation(g**power, lo, hi, budget)
            out[name] = _form(name, _tidy(total, budget), budget)
        except SymbolicBudgetError as exc:
            stopped[name] = str(exc)
        except _NO_RULE:
            pass
    mean, second = out["mean"], out["second_moment"]
    if mean is not None and second is not None:
        try:
            out["variance"] = _form("variance", _tidy(second.expression - mean.expression**2, budget), budget)
        except SymbolicBudgetError as exc:
            stopped["variance"] = str(exc)
        except _NO_RULE:
            pass
    elif "mean" in stopped or "second_moment" in stopped:
        stopped["variance"] = stopped.get("second_moment") or stopped["mean"]
    return out, stopped


# -- evaluation ---------------------------------------------------------------------------------------------------
class ScaledPhi(sp.Function):
    """e^{c + b^2/2} Phi(b): the product e^A Phi(B) with c = A - B^2/2 simplified before any rounding."""

    nargs = 2


def stable(expr: sp.Expr) -> sp.Expr:
    """Rewrite each e^A prod Phi(B_i)^k_i as prod ScaledPhi(0, B_i)^k_i times e^{A - sum k_i B_i^2/2}.

    The exponent left over is simplified symbolically, so that the Gaussian tails carried by erfcx and the
    exponential growth cancel exactly: ELU's e^{2q} Phi(-2 sqrt q) becomes ScaledPhi(0, -2 sqrt q) =
    erfcx(sqrt(2q))/2, and e^q Phi(-sqrt q)^2 becomes ScaledPhi(0, -sqrt q)^2, with no overflow at large q
    and no cancellation between exponent and tail.
    """

    def rewrite(term):
        factors = list(sp.Mul.make_args(term))
        exps = [f for f in factors if isinstance(f, sp.exp)]
        powers = [(f.args[0], 1) if isinstance(f, Phi) else (f.base.args[0], int(f.exp)) for f in factors
                  if isinstance(f, Phi) or (f.is_Pow and isinstance(f.base, Phi) and f.exp.is_Integer and f.exp > 0)]
        if not exps or not powers:
            return term
        rest = [f for f in factors if not isinstance(f, sp.exp) and not isinstance(f, Phi)
                and not (f.is_Pow and isinstance(f.base, Phi))]
        left = sp.simplify(sp.Add(*(e.args[0] for e in exps)) - sum(k * b**2 / 2 for b, k in powers))
        (b0, k0), *others = powers
        scaled = ScaledPhi(left / k0, b0) ** k0 * sp.Mul(*(ScaledPhi(0, b) ** k for b, k in others))
        return sp.Mul(*rest) * scaled

    return sp.Add(*(rewrite(t) for t in sp.Add.make_args(sp.expand(expr))))


def _values(act: Activation) -> dict:
    """The activation's parameter values as exact sympy numbers, keyed by their symbols."""
    from ._structure import exact

    return {parameter_symbol(k): exact(v) for k, v in act.params.items()}

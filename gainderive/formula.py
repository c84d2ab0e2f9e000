"""Whitelist parser: formula strings in ``x`` to sympy expressions.

A formula is parsed by Python's :mod:`ast` and rebuilt node by node from a
fixed set of syntax (numbers, ``x``, parameter names, ``+ - * / **``,
comparisons inside conditions) and functions (:data:`FUNCTIONS` plus the
registry's activations).  Nothing is handed to ``eval``, ``exec``, ``sympify``
or ``parse_expr``; anything outside the whitelist raises :class:`FormulaError`.

Numeric literals become exact rationals (``1.702`` is 851/500), so the same
formula is exact at any working precision.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import sympy as sp

from .errors import DuplicateParameterError, FormulaError
from .functions import Phi, sigmoid, softplus
from .suggest import accepted, did_you_mean, framework_hint

__all__ = ["FUNCTIONS", "Macro", "Parsed", "X", "parameter_symbol", "parse", "parse_formula"]

#: The pre-activation variable of every formula.
X = sp.Symbol("x", real=True)

MAX_LENGTH = 2000
MAX_NODES = 500
MAX_DEPTH = 40
MAX_EXPONENT = 64  # |n| for numeric exponents: x**n beyond this is a typo, not an activation
MAX_MAGNITUDE = sp.Integer(10) ** 300

_CONSTANTS = {"pi": sp.pi, "e": sp.E}


def _piecewise_from_where(cond, then, otherwise):
    return sp.Piecewise((then, cond), (otherwise, True))


@dataclass(frozen=True)
class _Function:
    arity: tuple[int, int]  # (min, max) positional arguments; max -1 = unbounded
    build: Callable[..., sp.Expr]
    conditional: bool = False  # first argument is a condition


#: Functions a formula may call (besides registry activations).
FUNCTIONS: dict[str, _Function] = {
    "exp": _Function((1, 1), sp.exp),
    "expm1": _Function((1, 1), lambda u: sp.exp(u) - 1),
    "log": _Function((1, 1), sp.log),
    "log1p": _Function((1, 1), lambda u: sp.log(1 + u)),
    "sqrt": _Function((1, 1), sp.sqrt),
    "abs": _Function((1, 1), sp.Abs),
    "sign": _Function((1, 1), sp.sign),
    "Heaviside": _Function((1, 1), sp.Heaviside),
    "max": _Function((2, -1), sp.Max),
    "min": _Function((2, -1), sp.Min),
    "clip": _Function((3, 3), lambda u, lo, hi: sp.Min(sp.Max(u, lo), hi)),
    "where": _Function((3, 3), _piecewise_from_where, conditional=True),
    "sin": _Function((1, 1), sp.sin),
    "cos": _Function((1, 1), sp.cos),
    "sinh": _Function((1, 1), sp.sinh),
    "cosh": _Function((1, 1), sp.cosh),
    "tanh": _Function((1, 1), sp.tanh),
    "arctan": _Function((1, 1), sp.atan),
    "atan": _Function((1, 1), sp.atan),
    "arcsin": _Function((1, 1), sp.asin),
    "asin": _Function((1, 1), sp.asin),
    "arcsinh": _Function((1, 1), sp.asinh),
    "asinh": _Function((1, 1), sp.asinh),
    "erf": _Function((1, 1), sp.erf),
    "erfc": _Function((1, 1), sp.erfc),
    "Phi": _Function((1, 1), Phi),
    "sigmoid": _Function((1, 1), sigmoid),
    "softplus": _Function((1, 1), softplus),
}


@dataclass(frozen=True)
class Macro:
    """A named activation callable inside formulas, e.g. ``elu(x, alpha=2)``.

    ``build(argument, params)`` returns the activation's expression at
    ``argument`` with ``params`` (name -> sympy expression) overriding
    defaults, and the conditions on the parameters it still needs once the
    formula's own parameters are bound (it raises for ones already violated).
    """

    params: tuple[str, ...]
    build: Callable[[sp.Expr, Mapping[str, sp.Expr]], tuple[sp.Expr, tuple]]


@dataclass(frozen=True)
class Parsed:
    """A parsed formula and the parameter conditions its registry calls impose (e.g. beta > 0)."""

    expression: sp.Expr
    conditions: tuple = ()


def parameter_symbol(name: str) -> sp.Symbol:
    """The sympy symbol for activation parameter ``name`` (real-valued)."""
    return sp.Symbol(name, real=True)


def _fail(message: str) -> FormulaError:
    return FormulaError(message)


class _Parser:
    def __init__(self, text: str, macros: Mapping[str, Macro]):
        self.text = text
        self.macros = macros
        self.conditions: list = []

    # -- entry -----------------------------------------------------------
    def parse(self) -> sp.Expr:
        try:
            tree = ast.parse(self.text.strip(), mode="eval")
        except SyntaxError as exc:
            raise _fail(f"cannot parse formula {self._show()}: {exc.msg}") from None
        except (ValueError, RecursionError, MemoryError, OverflowError):
            raise _fail(f"cannot parse formula {self._show()}: not a valid expression") from None
        count = sum(1 for _ in ast.walk(tree))
        if count > MAX_NODES:
            raise _fail(f"formula is too large ({count} syntax nodes; at most {MAX_NODES})")
        return self.expr(tree.body, 0)

    def _show(self) -> str:
        text = self.text if len(self.text) <= 60 else self.text[:57] + "..."
        return repr(text)

    # -- expressions -----------------------------------------------------
    def expr(self, node: ast.AST, depth: int) -> sp.Expr:
        if depth > MAX_DEPTH:
            raise _fail(f"formula is nested too deeply (at most {MAX_DEPTH} levels)")
        d = depth + 1
        if isinstance(node, ast.Constant):
            return self.number(node)
        if isinstance(node, ast.Name):
            return self.name(node.id)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
            operand = self.expr(node.operand, d)
            return self.checked(-operand if isinstance(node.op, ast.USub) else operand)
        if isinstance(node, ast.BinOp):
            return self.binop(node, d)
        if isinstance(node, ast.Call):
            return self.call(node, d)
        if isinstance(node, (ast.Compare, ast.BoolOp)) or (
            isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not)
        ):
            raise _fail("a comparison is allowed only as the condition of where(cond, a, b) or Piecewise")
        raise _fail(
            f"syntax {type(node).__name__} is not allowed in a formula; accepted: numbers, x, "
            "parameter names, + - * / **, and function calls"
        )

    def number(self, node: ast.Constant) -> sp.Expr:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(f"constant {value!r} is not allowed in a formula; accepted: real numbers")
        if isinstance(value, float) and not (value == value and abs(value) != float("inf")):
            raise _fail("non-finite constant in formula; accepted: finite real numbers")
        segment = ast.get_source_segment(self.text.strip(), node) or repr(value)
        try:
            number = sp.Rational(segment.replace("_", ""))
        except (TypeError, ValueError):
            number = sp.Rational(repr(value))
        return self.checked(number)

    def name(self, ident: str) -> sp.Expr:
        if ident == "x":
            return X
        if ident in _CONSTANTS:
            return _CONSTANTS[ident]
        if ident in FUNCTIONS or ident in self.macros:
            raise _fail(f"{ident!r} is a function; call it, e.g. {ident}(x)")
        if ident.startswith("_") or len(ident) > 32 or not ident.isascii():
            raise _fail(f"name {ident!r} is not allowed; parameter names are short ASCII identifiers")
        return parameter_symbol(ident)

    def binop(self, node: ast.BinOp, depth: int) -> sp.Expr:
        ops = {ast.Add: sp.Add, ast.Sub: lambda a, b: a - b, ast.Mult: sp.Mul}
        if isinstance(node.op, ast.BitXor):
            raise _fail("'^' is not a power in formulas; write x**2")
        left = self.expr(node.left, depth)
        right = self.expr(node.right, depth)
        if type(node.op) in ops:
            return self.checked(ops[type(node.op)](left, right))
        if isinstance(node.op, ast.Div):
            if right.is_zero:
                raise _fail("division by zero in formula")
            return self.checked(left / right)
        if isinstance(node.op, ast.Pow):
            if right.is_Number and abs(right) > MAX_EXPONENT:
                raise _fail(f"exponent {right} is too large; accepted: |exponent| <= {MAX_EXPONENT}")
            if left.is_zero and right.is_Number and right.is_negative:
                raise _fail("division by zero in formula (0 to a negative power)")
            return self.checked(left**right)
        raise _fail(f"operator {type(node.op).__name__} is not allowed; accepted: + - * / **")

    def checked(self, value: sp.Expr) -> sp.Expr:
        if value.has(sp.zoo, sp.nan, sp.oo, -sp.oo):
            raise _fail("formula is undefined or infinite (e.g. division by zero)")
        if value.is_Number and (abs(value) > MAX_MAGNITUDE or (value != 0 and abs(value) < 1 / MAX_MAGNITUDE)):
            raise _fail("constant outside the range 1e-300..1e300 in formula")
        return value

    # -- calls -----------------------------------------------------------
    def call(self, node: ast.Call, depth: int) -> sp.Expr:
        if not isinstance(node.func, ast.Name):
            raise _fail("only plain function names may be called, e.g. exp(x)")
        name = node.func.id
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            raise _fail(f"*args and **kwargs are not allowed in a call to {name!r}")
        primitive = FUNCTIONS.get(name)
        plain = len(node.args) == 1 and not node.keywords
        if name == "Piecewise":
            return self.piecewise(node, depth)
        if primitive is not None and (plain or name not in self.macros):
            return self.primitive(name, primitive, node, depth)
        if name in self.macros:
            return self.macro(name, self.macros[name], node, depth)
        known = sorted({*FUNCTIONS, *self.macros, "Piecewise"})
        raise _fail(f"unknown function {name!r}{accepted(did_you_mean(name, known), known)}")

    def primitive(self, name: str, fn: _Function, node: ast.Call, depth: int) -> sp.Expr:
        if node.keywords:
            raise _fail(f"{name}() takes no keyword arguments")
        lo, hi = fn.arity
        n = len(node.args)
        if n < lo or (hi >= 0 and n > hi):
            want = f"{lo}" if lo == hi else (f"at least {lo}" if hi < 0 else f"{lo} to {hi}")
            raise _fail(f"{name}() takes {want} argument(s), got {n}")
        if fn.conditional:
            args = [self.condition(node.args[0], depth), *(self.expr(a, depth) for a in node.args[1:])]
        else:
            args = [self.expr(a, depth) for a in node.args]
        return self.checked(fn.build(*args))

    def macro(self, name: str, macro: Macro, node: ast.Call, depth: int) -> sp.Expr:
        for kw in node.keywords:  # first: gelu(approximate="tanh") is about gelu_tanh, not the missing input
            if kw.arg not in macro.params:
                raise _fail(self.unknown_keyword(name, macro, kw))
        if not node.args:
            raise _fail(f"{name}() needs its input as first argument, e.g. {name}(x)")
        if len(node.args) - 1 > len(macro.params):
            raise _fail(f"{name}() takes at most {len(macro.params)} parameter(s): {', '.join(macro.params) or 'none'}")
        argument = self.expr(node.args[0], depth)
        params = {p: self.expr(a, depth) for p, a in zip(macro.params, node.args[1:])}
        for kw in node.keywords:
            if kw.arg in params:
                raise DuplicateParameterError(f"{name}() got parameter {kw.arg!r} twice; give each parameter once")
            params[kw.arg] = self.expr(kw.value, depth)
        expression, conditions = macro.build(argument, params)
        self.conditions.extend(c for c in conditions if c not in self.conditions)
        return self.checked(expression)

    def unknown_keyword(self, name: str, macro: Macro, kw: ast.keyword) -> str:
        """The message for ``name(x, kw=...)`` where ``name`` has no such parameter: a framework's keyword
        (``gelu(x, approximate="tanh")``), a misspelt parameter, or a plain unknown one."""
        value = kw.value.value if isinstance(kw.value, ast.Constant) else ast.get_source_segment(self.text.strip(),
                                                                                                   kw.value)
        hint = framework_hint(name, kw.arg, value)
        hint = f"; {hint}" if hint is not None else did_you_mean(kw.arg, macro.params)
        return f"{name}() has no parameter {kw.arg!r}{accepted(hint, macro.params)}"

    def piecewise(self, node: ast.Call, depth: int) -> sp.Expr:
        if node.keywords or not node.args:
            raise _fail("Piecewise takes (value, condition) pairs, e.g. Piecewise((x, x > 0), (0, True))")
        pairs = []
        for arg in node.args:
            if not (isinstance(arg, ast.Tuple) and len(arg.elts) == 2):
                raise _fail("each Piecewise argument must be a (value, condition) pair")
            pairs.append((self.expr(arg.elts[0], depth), self.condition(arg.elts[1], depth)))
        if pairs[-1][1] is not sp.true:
            raise _fail("the last Piecewise pair must have condition True, so every x is covered")
        return self.checked(sp.Piecewise(*pairs))

    # -- conditions ------------------------------------------------------
    def condition(self, node: ast.AST, depth: int):
        if depth > MAX_DEPTH:
            raise _fail(f"formula is nested too deeply (at most {MAX_DEPTH} levels)")
        d = depth + 1
        if isinstance(node, ast.Constant) and node.value is True:
            return sp.true
        if isinstance(node, ast.Compare):
            rel = {ast.Gt: sp.StrictGreaterThan, ast.Lt: sp.StrictLessThan,
                   ast.GtE: sp.GreaterThan, ast.LtE: sp.LessThan}
            terms = [self.expr(node.left, d), *(self.expr(c, d) for c in node.comparators)]
            parts = []
            for op, a, b in zip(node.ops, terms, terms[1:]):
                if type(op) not in rel:
                    raise _fail("conditions compare with < <= > >= only")
                parts.append(rel[type(op)](a, b))
            return sp.And(*parts)
        if isinstance(node, ast.BoolOp):
            combine = sp.And if isinstance(node.op, ast.And) else sp.Or
            return combine(*(self.condition(v, d) for v in node.values))
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.BitAnd, ast.BitOr)):
            combine = sp.And if isinstance(node.op, ast.BitAnd) else sp.Or
            return combine(self.condition(node.left, d), self.condition(node.right, d))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return sp.Not(self.condition(node.operand, d))
        raise _fail("a condition must be a comparison such as x > 0 (combine with and/or)")


def parse_formula(text: str, *, macros: Mapping[str, Macro] | None = None) -> sp.Expr:
    """Parse ``text`` into a sympy expression in :data:`X` and parameter symbols.

    Raises :class:`FormulaError` (one line, naming the problem and what is
    accepted) for anything outside the whitelist; no other exception escapes.
    """
    return parse(text, macros=macros).expression


def parse(text: str, *, macros: Mapping[str, Macro] | None = None) -> Parsed:
    """Like :func:`parse_formula`, also returning the conditions registry calls impose on parameters."""
    if not isinstance(text, str):
        raise FormulaError(f"a formula must be a string, got {type(text).__name__}")
    if len(text) > MAX_LENGTH:
        raise FormulaError(f"formula is too long ({len(text)} characters; at most {MAX_LENGTH})")
    if not text.strip():
        raise FormulaError("formula is empty; write an expression in x, e.g. x*sigmoid(x)")
    try:
        parser = _Parser(text, macros or {})
        expression = parser.parse()
        return Parsed(expression, tuple(parser.conditions))
    except FormulaError:
        raise
    except (TypeError, ValueError, ArithmeticError, RecursionError, MemoryError, AttributeError) as exc:
        # sympy may reject a combination the grammar allows (e.g. a relational in arithmetic)
        shown = text.strip()[:60]
        raise FormulaError(f"formula {shown!r} is not a valid real expression ({type(exc).__name__})") from None

r"""Quadrature backend: exact pieces where possible, Gauss-Kronrod panels split at the kinks otherwise.

A piece of f on which every integrand is a sum of terms c z^n e^{a z}
(polynomials, ELU's exponential side, their squares) is integrated exactly by
:mod:`._exact`, unless its terms cancel beyond the tolerance.  Every other
piece (and those, at the q where they cancel) gets adaptive Gauss-Kronrod
panels, all variances at once.

For z ~ N(0, q) write z = \sqrt{q}\,t with t standard normal, so

.. math::  E[h(z)] = \int_{-T}^{T} h(\sqrt{q}\,t)\,\varphi(t)\,dt,
           \qquad \varphi(t) = e^{-t^2/2}/\sqrt{2\pi},

with T = 38.5, where \varphi underflows double precision.  The t-line is cut
into panels at

* the breakpoints of f, t = b/\sqrt q (so every panel lies inside one smooth
  piece and the rule never straddles a kink);
* a fixed grid in t that resolves the Gaussian weight (0, ±2, ±5, ±9);
* every feature of the integrand (:mod:`gainderive.features`), a centre c and
  a width w in z (the sign change of tanh(k(z - b)), the peak of
  exp(-a(z - b)^2)), and the default feature (0, 1) that every activation
  has: t = (c ± w m)/\sqrt q for m = 1/2, 2, 8, 32, 128, then every factor 16
  until the offset passes 1 in t, where the t-grid takes over.  A feature far narrower
  than the panels (a bump of width 1e-4, or tanh's transition at q = 1e8,
  which fills |t| < 1e-4) would otherwise fall between the nodes of both
  rules, which then agree on a wrong value with an error estimate of 0.

Each panel gets the 21-point Gauss-Kronrod rule; |K21 - G10| scaled as in
QUADPACK (Piessens et al. 1983) is its error estimate.  Panels whose error
exceeds their share of the tolerance are bisected, all variances at once:
each round evaluates every unfinished panel of every q in one numpy call per
piece, and only the piece's own expression is evaluated on its panels.

The tolerance for E[h] is max(rtol |E[h]|, 100 eps E|h|): relative to the
value, except where the value is so much smaller than E|h| (a mean near 0)
that rounding in the integrand sets the floor.  The reported error is the sum
of the panel estimates plus a rounding floor no rule can see: the nodes are
floats, so h is sampled up to ~eps |t| away from where the rule assumes, an
error of eps |t| times the variation of h phi over the panel.  It matters
around a narrow feature far from z = 0 (relative error |z|/w eps for a bump of
width w at z) and is left out of the refinement test, since bisection cannot
reduce it.

**A fixed rule first** (:func:`_fixed_rule`).  Before any adaptive round, every
q of a chunk whose standard deviation s = \sqrt q is at most 64 is integrated by
one of six fixed composite rules in t, K31/G15 (QUADPACK's qk31) on panels cut
at 0 and mirrored: for s <= 0.55 at t = 3, 10 (124 nodes), for s <= 1 at 2.5,
5, 10 (186); for s <= 4 at 0.5, 1.5, 3.5, 10 and for s <= 8 at 0.3, 1, 3, 10
(248 each); for s <= 16 at 0.15, 0.5, 1.5, 3.5, 10 (310); for s <= 64 at 0.04,
0.12, 0.4, 1.2, 3, 10 (372): graded toward 0, where h(s t) changes on the
scale 1/s.  The nodes t_k and the Gaussian weights w_k \varphi(t_k) are
constants, so a q costs one evaluation of the pieces at z = s t_k and a few
reductions; its error is the per-panel QUADPACK estimate of the adaptive
rounds (plus the same rounding floor, and the mass beyond |t| = 10 bounded
from the outermost nodes), first with a lower bound L of QUADPACK's spread
that costs one matrix product, |sum_k w_k sgn(x_k) h phi(t_k)|: the estimate
u sqrt(u / L), u = 200 |K31 - G15|, is never smaller than QUADPACK's; a q it
does not accept is judged once more with the spread itself.  A q is accepted
only where that error meets the tolerance for every h_j and the rule can
resolve the integrand there:

* no breakpoint of f other than 0 lies within 38.5 standard deviations (one at 0
  is a panel end of the rule);
* every feature (centre c, width w) has a width in t, w/s, of at least 1/8 of
  every panel that (c +- w)/s touches, so that it spans several nodes and the
  Kronrod and Gauss results cannot both miss it (the failure the feature cuts
  exist for);
* every value is finite and the integrand has decayed at |t| = 10 (relative
  1e-15 of E|h|, as at |t| = 38.5 in the adaptive rounds).

Every other q (large q, oscillation the panels do not resolve, a kink away
from 0, a narrow bump, overflow) goes to the adaptive rounds, which report
divergence and non-convergence in their own words.  Each q's result depends on
that q alone.

**Folded** (:func:`_apply_folded`).  Where one piece covers both sides of 0
(no kink at 0), the symmetric rule over t < 0 and t > 0 is, exactly, the rule
over t > 0 applied to e(t) = [h(s t) + h(-s t)] \varphi(t), and the error
estimate is QUADPACK's for e.  The piece's program runs once per pair of nodes
(:mod:`gainderive.parity`): an h_j proven odd by the program's parity analysis
is 0 with error 0 (E of an odd function under a symmetric Gaussian; its E|h|,
finiteness and decay at |t| = 10 are still checked), an even one is twice its
half, and any other is folded from both values -- half the nodes for tanh's
(odd, even, even) moments, and half the reductions for silu and mish.  The
one-q path keeps the unfolded rule.
"""

from __future__ import annotations

import bisect
import math
import threading
import weakref
from typing import TYPE_CHECKING, NamedTuple, NoReturn

import numpy as np

from ..errors import ConvergenceError, DivergenceError
from ..estimate import Estimate
from ..features import DEFAULT_FEATURE, feature_cuts_array
from ..parity import EVEN, ODD, compiled
from ._exact import piece_moments
from ._gauss_kronrod import (
    GAUSS_INDEX,
    GAUSS_INDEX_31,
    GAUSS_WEIGHTS,
    GAUSS_WEIGHTS_31,
    KRONROD_NODES,
    KRONROD_NODES_31,
    KRONROD_WEIGHTS,
    KRONROD_WEIGHTS_31,
)

if TYPE_CHECKING:
    from ..integrand import Integrand

__all__ = ["DEFAULT_RTOL", "integrate"]

DEFAULT_RTOL = 1e-13
TAIL = 38.5
_T_GRID = (2.0, 5.0, 9.0, TAIL)
_MAX_ROUNDS = 64
#: Variances integrated together: the working memory is that of one chunk (a few tens of MB), whatever the grid.
Q_CHUNK = 4096
_PANELS_PER_Q = 50_000  # panels one q may evaluate in one adaptive pass: its own budget, never the batch's
_IN_FLIGHT = 250_000  # panels in one round of a batch (~60 MB of rule output); beyond, the batch is split
_CHUNK = 1024
_EPS = np.finfo(float).eps
_TINY = np.finfo(float).tiny

_XK = np.array(KRONROD_NODES)
_WK = np.array(KRONROD_WEIGHTS)
_WG = np.zeros_like(_WK)
_WG[list(GAUSS_INDEX)] = GAUSS_WEIGHTS
_W2 = np.stack([_WK, _WG], axis=1)
_ONES = np.ones(_XK.size - 1)
_ENDS = [0, -1]
_QUADPACK_SCALE = 200.0**1.5
_WK_MINUS_WG = _WK - _WG
_INV_SQRT_2PI = 1.0 / np.sqrt(2.0 * np.pi)
# The fixed rules use G15/K31 (QUADPACK's qk31): fewer nodes than G10/K21 for the same accepted range of s.
_FXK = np.array(KRONROD_NODES_31)
_FWK = np.array(KRONROD_WEIGHTS_31)
_FWG = np.zeros_like(_FWK)
_FWG[list(GAUSS_INDEX_31)] = GAUSS_WEIGHTS_31
_FWK_MINUS_WG = _FWK - _FWG
# A lower bound of QUADPACK's spread sum_k w_k |g_k - c|, c the panel's mean: for every c it is at least
# |sum_k w_k sgn(x_k) (g_k - c)| = |sum_k w_k sgn(x_k) g_k| (the weights are symmetric, so the c terms cancel),
# which is exact where g crosses c at the panel's centre (g monotone and nearly linear) and costs one product
_FW_SIGN = _FWK * np.sign(_FXK)
_FW_ONE_Q = np.stack([_FWK, _FWK_MINUS_WG, _FW_SIGN], axis=1)  # (31, 3): the three sums of the one-q path


class _Rule(NamedTuple):
    """A fixed composite K31/G15 rule in t, symmetric, with precomputed Gaussian weights."""

    largest_s: float  # the largest standard deviation it serves
    edges: np.ndarray  # panel ends in t, (P + 1,), with 0 among them
    t: np.ndarray  # nodes, (P * 21,), panel by panel
    phi: np.ndarray  # phi(t) at the nodes
    half: np.ndarray  # panel half-widths, (P,)
    reach: np.ndarray  # largest |t| on each panel, (P,)
    step_reach: np.ndarray  # for each step between successive nodes, the larger reach of the panels it touches
    right: int  # index of the first node with t > 0
    edge_list: list  # ``edges`` as Python floats, for the one-q path
    half_list: list  # ``half`` as Python floats
    tail_width: float  # width of the outermost panel
    half_tiled: dict  # m -> ``half`` repeated for m integrands, (m P,), made on first use
    step_reach_ext: np.ndarray  # ``step_reach`` and a 0 for the step from the last node to the next h_j's first
    ones: np.ndarray  # (P,) ones: a sum over panels as a product
    scale_one_q: dict  # m -> (m P, 3) scales of the one-q path's |sums|: 50 eps half, 200 half, half
    abs_weights: np.ndarray  # per node, Kronrod weight times its panel's half-width times phi: E|h| = |h| @ this
    folded: _Rule | None  # the panels t > 0 alone, for the folded integrand (:func:`_apply_folded`); None for itself


def _make_rule(largest_s: float, cuts: tuple[float, ...], mirrored: bool = True) -> _Rule:
    """The rule on the panels cut at 0 and +-cuts (``mirrored``), or at 0 and +cuts only (its folded half)."""
    positive = np.array(cuts)
    edges = np.concatenate([-positive[::-1], [0.0], positive]) if mirrored else np.concatenate([[0.0], positive])
    a, b = edges[:-1], edges[1:]
    half = 0.5 * (b - a)
    t = ((0.5 * (a + b))[:, None] + half[:, None] * _FXK).ravel()
    phi = np.exp(-0.5 * t * t) * _INV_SQRT_2PI
    reach = np.maximum(np.abs(a), np.abs(b))
    node_reach = np.repeat(reach, _FXK.size)
    return _Rule(largest_s, edges, t, phi, half, reach, np.maximum(node_reach[1:], node_reach[:-1]),
                 positive.size * _FXK.size if mirrored else 0, edges.tolist(), half.tolist(),
                 float(2 * half[-1]), _TiledHalves(half),
                 np.append(np.maximum(node_reach[1:], node_reach[:-1]), 0.0), np.ones(half.size),
                 _TiledHalves(np.stack([50 * _EPS * half, 200 * half, half], axis=1)),
                 np.tile(_FWK, half.size) * np.repeat(half, _FXK.size) * phi,
                 _make_rule(largest_s, cuts, mirrored=False) if mirrored else None)


class _TiledHalves(dict):
    """m -> per-panel scales (P,) or (P, k) stacked m times, the scales of m integrands' sums; made on first use."""

    def __init__(self, half: np.ndarray):
        super().__init__()
        self.half = half

    def __missing__(self, m: int) -> np.ndarray:
        self[m] = tiled = np.concatenate([self.half] * m)
        return tiled


# Chosen by measuring where the K31/G15 estimate of tanh, silu, mish, gelu, softplus, sigmoid and softsign meets
# 1e-13 over each range of s: panels graded toward 0, where h(s t) changes on the scale 1/s, and outer cuts where
# phi falls by a few decades (one panel [3, 10] is enough for G15 at s <= 0.55; [4, 10] is not at s <= 1).
# 124, 186, 248, 248, 310 and 372 nodes, a fifth fewer than the G10/K21 rules they replace at the same s.
_RULES = (_make_rule(0.55, (3.0, 10.0)), _make_rule(1.0, (2.5, 5.0, 10.0)), _make_rule(4.0, (0.5, 1.5, 3.5, 10.0)),
          _make_rule(8.0, (0.3, 1.0, 3.0, 10.0)), _make_rule(16.0, (0.15, 0.5, 1.5, 3.5, 10.0)),
          _make_rule(64.0, (0.04, 0.12, 0.4, 1.2, 3.0, 10.0)))
_FIXED_REACH = 10.0  # the rules stop at |t| = 10, phi(10) = 7.7e-23; beyond, the edge check and a tail bound
_FEATURE_NODES = 8.0  # a feature must be at least 1/8 of the panel it lies in
_SERIES_LARGEST_VARIANCE = 1e-2  # series.LARGEST_VARIANCE, without importing it on the one-q path
_BLOCK_VALUES = 49152  # node values per block of the fixed rule (384 kB: measured best)
# the same for the folded rule, per h_j not known odd (512 kB: measured best, on a process's first grid as after)
_FOLDED_BLOCK_VALUES = 65536
_KEYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_WORK = threading.local()  # the folded rule's node arrays (:func:`_workspace`)


class _Layout(NamedTuple):
    """What the fixed rule needs of an integrand, computed once: pieces at 0, breakpoints, features, signs."""

    left: int  # the piece just left of z = 0
    right: int  # the piece just right of z = 0
    far_cut: float  # the smallest |breakpoint| other than 0 (inf if none)
    centres: np.ndarray  # feature centres in z, the default feature included
    widths: np.ndarray
    signed: tuple[int, ...]  # indices of the h_j not known to be non-negative
    features: tuple[tuple[float, float], ...]  # (centre, width) as Python floats, the default feature included
    exact_free: bool  # no piece is integrated exactly (:func:`_no_exact_pieces`)


def _layout(integrand) -> _Layout:
    try:
        return _KEYS[integrand]
    except (KeyError, TypeError):
        pass
    cuts = np.asarray(integrand.breakpoints, dtype=float)
    far = np.abs(cuts[cuts != 0.0])
    # (an activation may list the default feature itself: once is enough)
    listed = (DEFAULT_FEATURE, *getattr(integrand, "features", ()))
    features = list(dict.fromkeys((float(c), float(w)) for c, w in listed))
    found = _Layout(int(np.searchsorted(cuts, 0.0, "left")), int(np.searchsorted(cuts, 0.0, "right")),
                    float(far.min()) if far.size else np.inf, np.array([float(c) for c, _ in features]),
                    np.array([float(w) for _, w in features]),
                    tuple(j for j, nonneg in enumerate(integrand.nonnegative) if not nonneg),
                    tuple((float(c), float(w)) for c, w in features), _no_exact_pieces(integrand))
    try:
        _KEYS[integrand] = found
    except TypeError:  # not weak-referenceable: recomputed each call
        pass
    return found


def _fixed_rule(integrand: Integrand, q: np.ndarray, pieces, rtol, offset_total, offset_l1):
    """The fixed rule (module docstring) over the given pieces; (total, error, l1, accepted), q where it applies.

    total, error and l1 are (m, len(q)) and meaningful where ``accepted`` (len(q),) is true.
    """
    m = len(integrand.labels)
    layout = _layout(integrand)
    total = np.zeros((m, q.size))
    error = np.zeros((m, q.size))
    l1 = np.zeros((m, q.size))
    accepted = np.zeros(q.size, dtype=bool)
    halves = [(k, side) for k, side in ((layout.left, 0), (layout.right, 1)) if k in pieces]
    if not halves:  # (the other pieces lie beyond 38.5 standard deviations wherever the rule applies)
        return total, error, l1, accepted
    s = np.sqrt(np.maximum(q, 0.0))  # a q <= 0 gets no rule here; the adaptive rounds say what is wrong
    lower = 0.0
    for rule in _RULES:
        members = np.nonzero((s > lower) & (s <= rule.largest_s) & (layout.far_cut >= TAIL * s))[0]
        lower = rule.largest_s
        if not members.size:
            continue
        sm = s[members]
        # every feature, centre +- width, spans at least 1/_FEATURE_NODES of each panel it touches (the widest are
        # at its ends: the panels widen away from 0), or lies beyond the rule
        centre, width = layout.centres[None, :] / sm[:, None], layout.widths[None, :] / sm[:, None]
        widest = np.maximum(rule.half[_panel_of(rule, centre - width)], rule.half[_panel_of(rule, centre + width)])
        seen = (width * _FEATURE_NODES >= 2 * widest) | (np.abs(centre) - width >= _FIXED_REACH)
        members, sm = members[seen.all(axis=1)], sm[seen.all(axis=1)]
        if not members.size:
            continue
        # first with the cheap lower bound of the spread (a larger estimate); the q it does not accept, once more
        # with QUADPACK's own spread, as in the adaptive rounds
        for exact_spread in (False, True):
            value, err, absolute = _apply_rule(integrand, rule, sm, halves, layout.signed, exact_spread)
            whole_total = offset_total[:, members] + value
            whole_l1 = offset_l1[:, members] + absolute
            tol = np.maximum(rtol * np.abs(whole_total), 100 * _EPS * whole_l1)
            finite = np.all(np.isfinite(value), axis=0)
            good = np.all(err <= tol, axis=0) & finite
            total[:, members], error[:, members], l1[:, members] = value, err, absolute
            accepted[members] = good
            retry = ~good & finite
            members, sm = members[retry], sm[retry]
            if not members.size:
                break
    return total, error, l1, accepted


def _panel_of(rule: _Rule, t):
    """Index of the panel of ``rule`` holding t (the first or last panel for t beyond the rule)."""
    return np.clip(np.searchsorted(rule.edges, t) - 1, 0, rule.half.size - 1)


def _apply_rule(integrand: Integrand, rule: _Rule, s: np.ndarray, halves, signed, exact_spread: bool = True):
    """Value, error (QUADPACK per panel, rounding floor, tail) and E|h| of the rule for each s, every h_j.

    The node values are formed in blocks of q small enough to stay in cache, q by q (each q's m integrands
    and panels contiguous), and each block is reduced to per-panel sums (Kronrod, Kronrod - Gauss, spread,
    |h phi| of the signed h_j) and per-q variation and edge; the per-panel error arithmetic then runs once.
    The error is inf where the integrand has not decayed at the rule's end: those q go to the adaptive rounds.
    With ``exact_spread=False`` the spread in QUADPACK's estimate is replaced by a lower bound (``_FW_SIGN``) that
    costs one product instead of three passes; the estimate is then larger, never smaller (:func:`_rule_error`).
    """
    whole = len(halves) == 2 and halves[0][0] == halves[1][0]
    if whole and rule.folded is not None:
        return _apply_folded(integrand, rule.folded, s, halves[0][0], signed, exact_spread)
    m = len(integrand.labels)
    n, nodes, panels = s.size, rule.t.size, rule.half.size
    sums = np.empty((3, n, m, panels))  # unscaled panel sums: Kronrod, Kronrod - Gauss, spread
    kronrod, difference, spread = sums
    signed_abs = np.empty((n, len(signed), panels))
    variation = np.empty((n, m))  # sum over panels of reach times the variation of h phi along the nodes
    edge = np.empty((n, m))
    block = max(1, _BLOCK_VALUES // (m * nodes))
    g = np.zeros((min(block, n), m, nodes))
    step_buffer = np.empty(g.size)
    with np.errstate(all="ignore"):  # a non-finite value sends its q to the adaptive rounds, which report it
        for lo in range(0, n, block):
            hi = min(lo + block, n)
            gb = g[: hi - lo]
            z = s[lo:hi, None] * rule.t
            if whole:
                for j, h in enumerate(integrand.numpy_pieces[halves[0][0]](z)):
                    np.multiply(h, rule.phi, out=gb[:, j])
            else:
                for k, side in halves:
                    part = slice(0, rule.right) if side == 0 else slice(rule.right, nodes)
                    for j, h in enumerate(integrand.numpy_pieces[k](z[:, part])):
                        np.multiply(h, rule.phi[part], out=gb[:, j, part])
            # matrix-vector products straight into the outputs: one BLAS call each, faster than one product with
            # several columns
            rows = gb.reshape(-1, _FXK.size)
            np.matmul(rows, _FWK, out=kronrod[lo:hi].reshape(-1))
            np.matmul(rows, _FWK_MINUS_WG, out=difference[lo:hi].reshape(-1))
            for i, j in enumerate(signed):
                signed_abs[lo:hi, i] = (np.abs(gb[:, j]).reshape(-1, _FXK.size) @ _FWK).reshape(hi - lo, panels)
            # variation along the nodes, each step weighted by the reach of its panel (a step across a panel end
            # by the larger): sum_p reach_p TV_p in one product
            # (on the flat block: contiguous, twice as fast as the strided 3-d slices; the step from one h_j's last
            # node to the next row's first gets weight 0 in step_reach_ext)
            flat, steps = gb.reshape(-1), step_buffer[: (hi - lo) * m * nodes]
            np.subtract(flat[1:], flat[:-1], out=steps[:-1])
            steps[-1] = 0.0
            np.abs(steps, out=steps)
            np.matmul(steps.reshape(hi - lo, m, nodes), rule.step_reach_ext, out=variation[lo:hi])
            np.add(np.abs(gb[..., 0]), np.abs(gb[..., -1]), out=edge[lo:hi])
            if exact_spread:
                rows -= 0.5 * kronrod[lo:hi].reshape(-1, 1)
                np.abs(rows, out=rows)
                np.matmul(rows, _FWK, out=spread[lo:hi].reshape(-1))
            else:
                np.matmul(rows, _FW_SIGN, out=spread[lo:hi].reshape(-1))
        value, err, absolute, edge = _rule_error(sums, signed_abs, variation, edge, rule, signed, exact_spread)
    err[edge > 1e-15 * absolute] = np.inf  # not decayed at |t| = 10: the adaptive rounds judge
    return value.T, err.T, absolute.T


def _apply_folded(integrand: Integrand, rule: _Rule, s: np.ndarray, piece: int, signed, exact_spread: bool):
    r""":func:`_apply_rule` where one piece covers both sides of 0: the rule applied to the folded integrand.

    The rule is symmetric (panels, nodes and weights mirrored about 0), so its sum over the nodes of both signs is
    exactly its sum over t > 0 of the folded integrand e(t) = [h(s t) + h(-s t)] \varphi(t), the panel t < 0 and
    its mirror adding up to one panel of e; the error of the whole is the rule's error on e, which QUADPACK's
    estimate judges panel by panel as for any integrand (the odd part of h, which the mirrored panels integrate
    to 0 exactly, no longer inflates it).  ``rule`` is the folded half (:attr:`_Rule.folded`).  The piece's
    program runs once per node pair (:class:`gainderive.parity.Compiled`), each value of known parity once:

    * an odd h_j (:func:`gainderive.parity.node_parities`, a sound analysis of the program) has E[h_j] = 0
      exactly -- the piece covers at least 38.5 standard deviations on both sides, beyond which the backend
      counts nothing -- and error 0; its E|h| and decay at |t| = 10 are still measured, and a non-finite or
      undecayed q goes to the adaptive rounds as any other;
    * an even h_j has e = 2 h \varphi: its sums over t > 0, doubled;
    * any other h_j: e from h(s t) and h(-s t) (Phi, sigmoid, erfc and softplus of an odd argument at both
      signs from one evaluation).

    E|h| of a signed h_j is that of |h(s t)| + |h(-s t)|, and the tail bound uses |h| at both outermost
    nodes, never |e| (where h(s t) and h(-s t) cancel, e can be small while h has not decayed).
    """
    m = len(integrand.labels)
    paired = compiled(integrand.numpy_pieces[piece], "paired")
    parity = paired.output_parity
    odd = [j for j in range(m) if parity[j] == ODD]
    active = [j for j in range(m) if parity[j] != ODD]
    active_signed = tuple(a for a, j in enumerate(active) if j in signed)
    n, nodes, panels, size = s.size, rule.t.size, rule.half.size, len(active)
    sums = np.empty((3, n, size, panels))  # unscaled panel sums of e: Kronrod, Kronrod - Gauss, spread
    kronrod, difference, spread = sums
    signed_abs = np.empty((n, len(active_signed), panels))
    variation = np.empty((n, size))
    edge = np.empty((n, size))
    odd_abs = np.empty((n, len(odd)))  # E|h| over t > 0 (the weights hold phi and the half-widths)
    odd_edge = np.empty((n, len(odd)))  # |h| at the outermost node
    block = max(1, _FOLDED_BLOCK_VALUES // (max(size, 1) * nodes))
    # the folded values h_j by h_j, each block of q contiguous: (size, q, nodes) -- writing each h_j's values as
    # one contiguous run costs half what interleaving them q by q does; the panel sums are transposed afterwards
    # (they are 31 times smaller)
    # the node arrays live in one per-thread workspace, reused by every call: fresh arrays of this size would be
    # mapped and faulted in anew, which on a process's first grids cost as much as the arithmetic
    values = min(block, n) * max(size, 1) * nodes
    work = _workspace(2 * values + 2 * min(block, n) * nodes)
    g_storage, step_buffer = work[:values], work[values: 2 * values]
    scratch = work[2 * values:].reshape(2, min(block, n), nodes)
    phi, last_phi = rule.phi, float(rule.phi[-1])
    with np.errstate(all="ignore"):  # a non-finite value sends its q to the adaptive rounds, which report it
        for lo in range(0, n, block):
            hi = min(lo + block, n)
            count = hi - lo
            gb = g_storage[: size * count * nodes].reshape(size, count, nodes)
            first, second = scratch[0, :count], scratch[1, :count]
            found = _run_paired(paired, s[lo:hi], rule.t)
            for i, j in enumerate(odd):
                np.abs(found[j][1], out=first)
                np.matmul(first, rule.abs_weights, out=odd_abs[lo:hi, i])
                odd_edge[lo:hi, i] = first[:, -1]
            for a, j in enumerate(active):
                kind, plus, minus = found[j]
                if kind == EVEN:
                    np.multiply(plus, phi, out=gb[a])
                    edge[lo:hi, a] = np.abs(gb[a, :, -1])
                else:
                    np.add(plus, minus, out=gb[a])
                    gb[a] *= phi
                    edge[lo:hi, a] = (np.abs(plus[:, -1]) + np.abs(minus[:, -1])) * last_phi
                if a in active_signed:
                    if kind == EVEN:
                        np.abs(gb[a], out=first)
                    else:
                        np.abs(plus, out=first)
                        first += np.abs(minus, out=second)
                        first *= phi
                    i = active_signed.index(a)
                    signed_abs[lo:hi, i] = (first.reshape(-1, _FXK.size) @ _FWK).reshape(count, panels)
            if not size:
                continue
            rows = gb.reshape(-1, _FXK.size)
            kronrod[lo:hi] = (rows @ _FWK).reshape(size, count, panels).transpose(1, 0, 2)
            difference[lo:hi] = (rows @ _FWK_MINUS_WG).reshape(size, count, panels).transpose(1, 0, 2)
            flat, steps = gb.reshape(-1), step_buffer[: size * count * nodes]
            np.subtract(flat[1:], flat[:-1], out=steps[:-1])
            steps[-1] = 0.0
            np.abs(steps, out=steps)
            variation[lo:hi] = (steps.reshape(-1, nodes) @ rule.step_reach_ext).reshape(size, count).T
            if exact_spread:
                rows -= 0.5 * (kronrod[lo:hi].transpose(1, 0, 2)).reshape(-1, 1)
                np.abs(rows, out=rows)
                spread[lo:hi] = (rows @ _FWK).reshape(size, count, panels).transpose(1, 0, 2)
            else:
                spread[lo:hi] = (rows @ _FW_SIGN).reshape(size, count, panels).transpose(1, 0, 2)
        value, err, absolute = np.zeros((m, n)), np.zeros((m, n)), np.empty((m, n))
        if size:
            folded_value, folded_err, folded_abs, tail = _rule_error(sums, signed_abs, variation, edge, rule,
                                                                     active_signed, exact_spread)
            # an even h_j's sums are those of h phi over t > 0: the whole is twice that
            twice = np.array([2.0 if parity[j] == EVEN else 1.0 for j in active])
            folded_value *= twice
            folded_err *= twice
            folded_abs *= twice
            folded_err[tail * twice > 1e-15 * folded_abs] = np.inf  # not decayed at |t| = 10: the adaptive rounds
            value[active], err[active], absolute[active] = folded_value.T, folded_err.T, folded_abs.T
        if odd:
            absolute[odd] = 2 * odd_abs.T
            value[odd] = np.where(np.isfinite(absolute[odd]), 0.0, np.nan)  # not finite: the adaptive rounds
            decayed = 2 * odd_edge.T * last_phi * rule.tail_width <= 1e-15 * absolute[odd]
            err[odd] = np.where(decayed, 0.0, np.inf)
    return value, err, absolute


def _workspace(size: int) -> np.ndarray:
    """A flat float buffer of ``size`` values, one per thread, grown when needed and otherwise reused."""
    buffer = getattr(_WORK, "buffer", None)
    if buffer is None or buffer.size < size:
        buffer = _WORK.buffer = np.empty(size)
    return buffer[:size]


def _run_paired(paired, s: np.ndarray, t: np.ndarray) -> list[tuple]:
    """The paired program at z = s t (an outer product): (parity, h(z), h(-z) or None), each of shape (s, t).

    A program of in-place steps runs bound to its own buffers, z written straight into its input, so that a
    block allocates nothing; any other program is called on a fresh z.
    """
    if not paired.static:
        return paired(s[:, None] * t)
    shape = (s.size, t.size)
    z = paired.input(s.size * t.size).reshape(shape)
    np.multiply(s[:, None], t, out=z)
    return [(kind, plus if np.ndim(plus) == 0 else plus.reshape(shape),
             None if minus is None else minus.reshape(shape)) for kind, plus, minus in paired.run()]


def _rule_error(sums, signed_abs, variation, edge, rule: _Rule, signed, exact_spread: bool = True):
    """(value, error, E|h|, tail) from the unscaled per-panel sums of the fixed rule (panels on the last axis).

    ``sums`` stacks the Kronrod, Kronrod - Gauss and spread sums, (3, ..., m, P), contiguous, and is overwritten;
    ``signed_abs`` holds the sums of |h phi| of the signed h_j (..., len(signed), P), ``variation``
    sum_p reach_p TV_p and ``edge`` |h phi| at the two outermost nodes, (..., m).  Returns arrays (..., m).
    Without ``exact_spread`` the third sum is the lower bound L <= spread of ``_FW_SIGN`` (up to its sign), and a
    panel's estimate is u sqrt(u / L) >= u sqrt(u / spread) >= QUADPACK's min(spread, u sqrt(u / spread)).
    """
    # Every per-panel quantity scales with the panel's half-width h_p (the Kronrod sum, |K31 - G15|, the spread
    # and L, the rounding floor), and QUADPACK's estimate is homogeneous of degree 1 in them: the panels' sums stay
    # unscaled and the sums over the panels are products with the half-widths.  (Scaling in place first cost more
    # than the rest: numpy broadcasts over a last axis of 2-12 panels slowly, and a product over a stack of such
    # rows is ten times one over the flat rows.)
    kronrod, u, spread = sums
    shape, panels = kronrod.shape[:-1], kronrod.shape[-1]

    def over_panels(per_panel: np.ndarray) -> np.ndarray:
        return (per_panel.reshape(-1, panels) @ rule.half).reshape(shape)

    ab = np.abs(kronrod)
    if signed:
        ab[..., list(signed), :] = signed_abs
    absolute = over_panels(ab)
    value = over_panels(kronrod)
    # QUADPACK's error, spread min(1, (200 |K - G| / spread)^1.5) as in the adaptive rounds, written
    # min(spread, u sqrt(u / spread)) (a power with exponent 1.5 costs ten times a square root); fmin: a panel
    # with no spread, where h phi is constant and K = G up to rounding, gets 0 and keeps the rounding floor
    np.abs(u, out=u)
    u *= 200.0
    if not exact_spread:
        np.abs(spread, out=spread)
    ratio = np.divide(u, spread, out=kronrod)
    np.sqrt(ratio, out=ratio)
    ratio *= u
    # u = 0 (K = G exactly) with spread or L = 0 gives nan, which fmin and fmax pass over: the rounding floor;
    # u > 0 with L = 0 gives inf, refused here and decided with the exact spread
    e = np.fmin(spread, ratio, out=ratio) if exact_spread else ratio
    ab *= 50 * _EPS
    err = over_panels(np.fmax(ab, e, out=e))
    # the rounding floor of the adaptive rounds (eps |t| times the variation of h phi along the nodes), and the
    # mass beyond |t| = 10, which the outermost nodes' |h phi| times the panel width bounds many times over
    err += variation * (4 * _EPS)
    edge = edge * rule.tail_width
    err += edge
    return value, err, absolute, edge


def _no_exact_pieces(integrand) -> bool:
    return all(terms is None for terms in integrand.exact_terms)


def _one_q(integrand, q: float, rtol: float):
    """The fixed rule for a single q with as few numpy calls as it needs: (value, error) each (m,), or None.

    The same rule, estimate and acceptance test as :func:`_fixed_rule` for an integrand with no exact pieces;
    None where :func:`_fixed_rule` would not accept this q (the caller then takes the array path).
    """
    if not 0 < q < math.inf:  # q <= 0, inf or nan: the array path says what is wrong
        return None
    layout = _layout(integrand)
    s = math.sqrt(q)
    if layout.far_cut < TAIL * s:
        return None
    for rule in _RULES:
        if s <= rule.largest_s:
            break
    else:
        return None
    last = len(rule.edge_list) - 2
    for centre, width in layout.features:  # the feature test of _fixed_rule, in Python
        centre, width = centre / s, width / s
        if abs(centre) - width < _FIXED_REACH:
            ends = (min(max(bisect.bisect_left(rule.edge_list, centre + d) - 1, 0), last) for d in (-width, width))
            if width * _FEATURE_NODES < 2 * max(rule.half_list[i] for i in ends):
                return None
    m = len(integrand.labels)
    nodes = rule.t.size
    padded = np.empty(m * nodes + 1)  # the node values g_j = h_j phi, row by row, and one spare for the steps
    g = padded[:-1].reshape(m, nodes)
    z = rule.t * s
    with np.errstate(all="ignore"):
        if layout.left == layout.right:
            for j, h in enumerate(integrand.numpy_pieces[layout.left](z)):
                np.multiply(h, rule.phi, out=g[j])
        else:
            for k, part in ((layout.left, slice(0, rule.right)), (layout.right, slice(rule.right, nodes))):
                for j, h in enumerate(integrand.numpy_pieces[k](z[part])):
                    np.multiply(h, rule.phi[part], out=g[j, part])
        # the arithmetic of _apply_rule and _rule_error in as few numpy calls as it takes, on flat arrays and with
        # ndarray.dot: at this size each call, not the arithmetic, is the cost
        padded[-1] = 0.0
        steps = padded[1:] - padded[:-1]  # steps[j nodes + k] = g_j[k + 1] - g_j[k]; the last of each row crosses
        variation = np.abs(steps, out=steps).reshape(m, nodes).dot(rule.step_reach_ext)  # (weight 0 there)
        rows = g.reshape(-1, _FXK.size)
        # per panel: the Kronrod sum, K - G and the lower bound L of the spread, unscaled
        sums = rows.dot(_FW_ONE_Q)
        value = sums[:, 0].reshape(m, -1).dot(rule.half)
        ends = g[:, :: nodes - 1].tolist()  # the two outermost nodes
        scaled = np.abs(sums)
        ab = scaled[:, 0].reshape(m, -1)  # E|h| per panel, unscaled, where h >= 0
        for j in layout.signed:  # E|h| of a signed h_j is not |E h| panel by panel
            ab[j] = np.abs(g[j]).reshape(-1, _FXK.size).dot(_FWK)
        absolute = ab.dot(rule.half)
        scaled *= rule.scale_one_q[m]  # the rounding floor 50 eps E|h|, u = 200 |K - G| and L, per panel
        ab, u = scaled[:, 0], scaled[:, 1]
        # the error as _rule_error makes it, first with the lower bound of the spread, which costs nothing more
        # (u sqrt(u / L): larger than QUADPACK's estimate, never smaller); where that is not accepted, once more
        # with QUADPACK's own spread, as _fixed_rule does
        ratio = np.divide(u, scaled[:, 2])
        np.sqrt(ratio, out=ratio)
        ratio *= u
        err = np.fmax(ab, ratio, out=ratio).reshape(m, -1).dot(rule.ones)
        found = _one_q_accepted(value, err, absolute, variation, ends, rule.tail_width, rtol)
        if found is not None or not all(math.isfinite(v) for v in value.tolist()):
            return found
        rows -= (0.5 * sums[:, 0])[:, None]
        spread = np.abs(rows, out=rows).dot(_FWK)
        spread *= rule.half_tiled[m]
        ratio = np.divide(u, spread)
        np.sqrt(ratio, out=ratio)
        ratio *= u
        e = np.fmin(spread, ratio, out=ratio)  # QUADPACK's spread min(1, (200 |K - G| / spread)^1.5), as there
        err = np.fmax(ab, e, out=e).reshape(m, -1).dot(rule.ones)
    return _one_q_accepted(value, err, absolute, variation, ends, rule.tail_width, rtol)


def _one_q_accepted(value, err, absolute, variation, ends, tail_width, rtol):
    """The rounding floor and tail bound of :func:`_rule_error` and the acceptance test of :func:`_fixed_rule`, on
    m numbers in Python: (value, error) or None."""
    found = []
    for v, e, a, var, (first, last) in zip(value.tolist(), err.tolist(), absolute.tolist(), variation.tolist(), ends):
        edge = (abs(first) + abs(last)) * tail_width
        e += var * (4 * _EPS) + edge
        if not (math.isfinite(v) and e <= max(rtol * abs(v), 100 * _EPS * a) and edge <= 1e-15 * a):
            return None
        found.append(e)
    return value, np.array(found)


def _initial_panels(cuts: np.ndarray, s: np.ndarray, pieces, features=()):
    """Panel ends (a, b) and owning variance index for every q, in the given pieces only."""
    grid = np.array([0.0, *_T_GRID, *(-g for g in _T_GRID)])
    points = [np.broadcast_to(grid, (s.size, grid.size)), feature_cuts_array(features, s, TAIL)]
    if cuts.size:
        points.append(np.outer(1.0 / s, cuts))
    mesh = np.sort(np.clip(np.concatenate(points, axis=1), -TAIL, TAIL), axis=1)
    a, b = mesh[:, :-1], mesh[:, 1:]
    owner = np.broadcast_to(np.arange(s.size)[:, None], a.shape)
    wanted = np.isin(np.arange(cuts.size + 1), pieces)
    keep = (b > a) & wanted[np.searchsorted(cuts, 0.5 * (a + b) * s[:, None])]
    return a[keep], b[keep], owner[keep]


def _panel_rule(integrand: Integrand, a, b, owner, piece, s, q):
    """Kronrod value, error estimate, E|h|, tail size and rounding floor of every panel, for every h_j.

    The rounding floor is what neither rule can see, because both share the nodes: a node t_k is
    only known to a relative eps, so h phi is integrated at nodes shifted by up to ~eps |t|, an
    error up to eps max|t| times the total variation of h phi over the panel.  Around a feature of
    width w at |z| >> w (a bump of width 1e-4 at z = 0.5) that is |z|/w times eps |E h|.

    Panels arrive sorted by piece and are processed in chunks small enough
    that numpy's temporaries are recycled rather than freshly mapped: fresh
    multi-megabyte temporaries cost more in page faults than the arithmetic.
    """
    m = len(integrand.labels)
    signed = [j for j, nonneg in enumerate(integrand.nonnegative) if not nonneg]
    kron = np.empty((m, a.size))
    err = np.empty((m, a.size))
    absolute = np.empty((m, a.size))
    edge = np.empty((m, a.size))
    noise = np.empty((m, a.size))
    work = np.empty((m, _CHUNK, _XK.size))
    work_steps = np.empty((m, _CHUNK, _XK.size - 1))
    for lo in range(0, a.size, _CHUNK):
        hi = min(lo + _CHUNK, a.size)
        mid, half = 0.5 * (a[lo:hi] + b[lo:hi]), 0.5 * (b[lo:hi] - a[lo:hi])
        t = mid[:, None] + half[:, None] * _XK
        z = t * s[owner[lo:hi], None]
        np.multiply(t, t, out=t)
        t *= -0.5
        phi = np.exp(t, out=t)
        phi *= _INV_SQRT_2PI
        values = work[:, : hi - lo]
        cuts = np.searchsorted(piece[lo:hi], np.arange(len(integrand.numpy_pieces) + 1))
        with np.errstate(all="ignore"):
            for k, program in enumerate(integrand.numpy_pieces):
                p0, p1 = cuts[k], cuts[k + 1]
                if p0 < p1:
                    for j, h in enumerate(program(z[p0:p1])):
                        if not np.isfinite(h).all():
                            _not_finite(j, h, z[p0:p1], owner[lo:hi][p0:p1], q, integrand.labels)
                        np.multiply(h, phi[p0:p1], out=values[j, p0:p1])
        # |h phi| at the node nearest a truncation point |t| = T, times the panel width
        outer = np.nonzero((b[lo:hi] >= TAIL) | (a[lo:hi] <= -TAIL))[0]
        edge[:, lo:hi] = 0.0
        if outer.size:
            node = np.where(b[lo:hi][outer] >= TAIL, -1, 0)
            edge[:, lo + outer] = np.abs(values[:, outer, node]) * (2 * half[outer])
        # total variation of h phi along the (sorted) nodes, times the largest |t| on the panel
        reach = np.maximum(np.abs(a[lo:hi]), np.abs(b[lo:hi]))
        steps = np.subtract(values[..., 1:], values[..., :-1], out=work_steps[:, : hi - lo])
        noise[:, lo:hi] = np.abs(steps, out=steps) @ _ONES
        noise[:, lo:hi] *= 4 * _EPS * reach
        kg = values @ _W2
        k_, g_ = kg[..., 0] * half, kg[..., 1] * half
        ab = np.abs(k_)  # E|h| = E[h] on a panel where h >= 0
        if signed:
            ab[signed] = np.abs(values[signed]) @ _WK * half
        values -= (0.5 * kg[..., 0])[..., None]
        np.abs(values, out=values)
        spread = values @ _WK * half
        # QUADPACK's scaling of |K21 - G10|, with a floor for rounding in the sum
        e = np.abs(k_ - g_)
        with np.errstate(divide="ignore", invalid="ignore"):
            scaled = spread * np.minimum(1.0, (200.0 * e / spread) ** 1.5)
        e = np.where((spread > 0) & (e > 0), scaled, e)
        kron[:, lo:hi], err[:, lo:hi], absolute[:, lo:hi] = k_, np.maximum(50 * _EPS * ab, e), ab
    return kron, err, absolute, edge, noise


_SQUARE_OVERFLOWS = 1e150  # |z| beyond which z^2 (1e300) is a step from leaving the double range


def _not_finite(j: int, h: np.ndarray, z: np.ndarray, owner: np.ndarray, q, labels) -> NoReturn:
    bad = ~np.isfinite(h)
    # report the offending point nearest the centre: that is where the trouble starts
    p, n = np.unravel_index(np.argmin(np.where(bad, np.abs(z), np.inf)), h.shape)
    where = f"E[{labels[j]}] at q = {q[owner[p]]:g}: the integrand"
    # nan with every point nearer the centre finite, so far out that z^2 leaves the double range: an overflow
    # (inf * 0 in z^2 Phi(z)^2), not a formula that is undefined there
    if np.isinf(h[p, n]) or abs(z[p, n]) > _SQUARE_OVERFLOWS:
        raise DivergenceError(
            f"{where} overflows double precision at z = {z[p, n]:.6g}, inside the 38.5-standard-deviation range "
            "the expectation needs; it diverges or leaves the double range (method='high_precision' uses mpmath, "
            "which does not overflow)"
        )
    raise DivergenceError(
        f"{where} is undefined (not a real number) at z = {z[p, n]:.6g}; a formula must be real for every real x "
        "(e.g. log(abs(x)) rather than log(x))"
    )


def integrate(integrand: Integrand, variance, *, rtol: float = DEFAULT_RTOL,
              small_variance_series: bool = True) -> tuple[Estimate, ...]:
    """E[h_j(z)], z ~ N(0, q), for every h_j of ``integrand`` and every q in ``variance``.

    Returns one :class:`Estimate` per h_j whose value and error have the shape
    of ``variance`` (q > 0 and finite).  Raises :class:`DivergenceError` when
    the integrand is not finite or does not decay, :class:`ConvergenceError`
    when the tolerance is not met at some q (a singular or divergent integrand).

    The variances are taken ``Q_CHUNK`` at a time, so the working memory is that of one chunk whatever the
    number of q; every q has its own tolerance and its own panel budget, so its value and error do not depend
    on the other q of the call.  Each q is first tried with a fixed rule (module docstring), which answers most
    q of a table in one pass; only the q it does not accept go through adaptive bisection.  A single q (a float
    or a 0-d array) whose integrand has no exact pieces takes the same fixed rule without the array machinery.

    Where q is so small that the integrand is rounding noise (sigmoid's (f - 1/2)^2 at q = 1e-20) or its
    halves cancel (ELU's mean at q = 1e-40), E[h_j] comes from the Taylor series of h at 0
    (:mod:`.series`) for each (h_j, q) where that meets the tolerance; ``small_variance_series=False``
    turns this off.
    """
    if type(variance) is float and (not small_variance_series or variance > _SERIES_LARGEST_VARIANCE) and \
            _layout(integrand).exact_free:
        found = _one_q(integrand, variance, rtol)  # one q: no array machinery where the fixed rule applies
        if found is not None:  # indexing the (m,) results gives numpy scalars, as reshape(())[()] would
            value, error = found
            return tuple(Estimate(value[j], error[j], "quadrature") for j in range(value.size))
    q = np.asarray(variance, dtype=float)
    if q.size == 1 and _no_exact_pieces(integrand) and (not small_variance_series
                                                        or q.flat[0] > _SERIES_LARGEST_VARIANCE):
        found = _one_q(integrand, float(q.flat[0]), rtol)  # one q: no array machinery where the fixed rule applies
        if found is not None:
            if not q.shape:  # iterating the (m,) results gives numpy scalars, as reshape(())[()] would
                return tuple(Estimate(v, e, "quadrature") for v, e in zip(*found))
            return tuple(Estimate(v.reshape(q.shape), e.reshape(q.shape), "quadrature") for v, e in zip(*found))
    shape, flat = q.shape, q.ravel()
    value = np.empty((len(integrand.labels), flat.size))
    error = np.empty_like(value)
    for lo in range(0, flat.size, Q_CHUNK):
        hi = min(lo + Q_CHUNK, flat.size)
        value[:, lo:hi], error[:, lo:hi] = _integrate_chunk(integrand, flat[lo:hi], rtol, small_variance_series)
    return tuple(Estimate(value[j].reshape(shape)[()], error[j].reshape(shape)[()], "quadrature")
                 for j in range(len(integrand.labels)))


def _integrate_chunk(integrand: Integrand, q: np.ndarray, rtol: float,
                     small_variance_series: bool) -> tuple[np.ndarray, np.ndarray]:
    """(value, error), each (m, len(q)), for a flat array of at most ``Q_CHUNK`` variances."""
    # ---- begin: small-variance Taylor series (gainderive/backends/series.py) ----
    if small_variance_series:
        from . import series

        found = series.integrate(integrand, q, rtol)
        if found is not None and found[2].any():
            value, error, usable = found
            rest = ~usable.all(axis=0)
            if rest.any():  # quadrature for the q where some h_j is not served by the series
                quad_value, quad_error = _integrate_chunk(integrand, q[rest], rtol, False)
                take = ~usable[:, rest]
                value[:, rest] = np.where(take, quad_value, value[:, rest])
                error[:, rest] = np.where(take, quad_error, error[:, rest])
            return value, error
    # ---- end: small-variance Taylor series ----
    m = len(integrand.labels)
    cuts = np.asarray(integrand.breakpoints, dtype=float)
    exact = [k for k, terms in enumerate(integrand.exact_terms) if terms is not None]

    # 1. pieces that are sums of z^n e^{az}: exact, with a bound on their rounding error.  A piece is trusted
    # where it is finite and its bound is below half its size; elsewhere (ELU's (e^z - 1)^2 at small q, a
    # polynomial piece whose terms q^2... cancel or overflow at q = 1e100) it goes to panels in step 3.
    bounds = [-np.inf, *cuts, np.inf]
    parts = {k: [np.array(v) for v in piece_moments(integrand.exact_terms[k], bounds[k], bounds[k + 1], q,
                                                    integrand.nonnegative)] for k in exact}
    trusted = {}
    for k, (value, err, absolute) in parts.items():
        trusted[k] = np.isfinite(value) & np.isfinite(err) & np.isfinite(absolute) & (err <= 0.5 * np.abs(value))
        trusted[k] |= (err == 0) & (value == 0)
        for v in (value, err, absolute):
            v[~trusted[k]] = 0.0  # counted once step 3 has integrated it by panels

    def exact_sum(which: int, skip=None) -> np.ndarray:
        return sum((p[which] for k, p in parts.items() if k != skip), np.zeros((m, q.size)))

    # 2. the other pieces by adaptive panels, against the tolerance of the whole
    panels = [k for k in range(len(integrand.numpy_pieces)) if k not in exact]
    panel = [np.zeros((m, q.size)) for _ in range(3)]
    if panels:
        panel = list(_fixed_then_adaptive(integrand, cuts, q, panels, rtol, exact_sum(0), exact_sum(2)))

    # 3. exact pieces that are untrusted or whose rounding exceeds their share of the tolerance: panels there.
    # The rest of the sum is formed from the other pieces, never as total - this piece: where this piece's
    # terms cancelled to 1e149 the difference would have lost everything else.
    tol = np.maximum(rtol * np.abs(panel[0] + exact_sum(0)), 100 * _EPS * (panel[2] + exact_sum(2)))
    for k in exact:
        value, err, absolute = parts[k]
        redo = np.nonzero(np.any(~trusted[k] | (err > 0.5 * tol / max(len(exact), 1)), axis=0))[0]
        if redo.size:
            rest_total = (panel[0] + exact_sum(0, skip=k))[:, redo]
            rest_l1 = (panel[2] + exact_sum(2, skip=k))[:, redo]
            value[:, redo], err[:, redo], absolute[:, redo] = _fixed_then_adaptive(integrand, cuts, q[redo], [k],
                                                                                  rtol, rest_total, rest_l1)
    total, error = panel[0] + exact_sum(0), panel[1] + exact_sum(1)
    if not np.all(np.isfinite(total)):
        j, i = (int(v[0]) for v in np.nonzero(~np.isfinite(total)))
        raise DivergenceError(f"E[{integrand.labels[j]}] at q = {q[i]:g} overflows double precision; the "
                              "expectation diverges or leaves the double range (method='high_precision' uses mpmath)")
    return total, error


def _fixed_then_adaptive(integrand: Integrand, cuts, q, pieces, rtol, offset_total, offset_l1):
    """(total, error, l1) over the given pieces: the fixed rule where it is accepted, adaptive rounds elsewhere."""
    total, error, l1, accepted = _fixed_rule(integrand, q, pieces, rtol, offset_total, offset_l1)
    rest = np.nonzero(~accepted)[0]
    if rest.size == q.size:
        return _adaptive(integrand, cuts, q, pieces, rtol, offset_total, offset_l1)
    if rest.size:
        total[:, rest], error[:, rest], l1[:, rest] = _adaptive(integrand, cuts, q[rest], pieces, rtol,
                                                                offset_total[:, rest], offset_l1[:, rest])
    return total, error, l1


def _adaptive(integrand: Integrand, cuts, q, pieces, rtol, offset_total, offset_l1):
    """Adaptive Gauss-Kronrod over the given pieces for the variances q; (total, error, l1), each (m, len(q)).

    The tolerance is taken relative to offset + this part, i.e. to the whole expectation.  Every q has its
    own tolerance and budget (:func:`_adaptive_batch`), so a batch whose rounds would hold more than
    ``_IN_FLIGHT`` panels is split in two and each half done on its own, with the same result per q: memory
    stays bounded by ``_IN_FLIGHT`` panels however many q need many panels.
    """
    done = _adaptive_batch(integrand, cuts, q, pieces, rtol, offset_total, offset_l1)
    if done is None:
        half = q.size // 2
        parts = [_adaptive(integrand, cuts, q[part], pieces, rtol, offset_total[:, part], offset_l1[:, part])
                 for part in (slice(0, half), slice(half, None))]
        done = tuple(np.concatenate([x, y], axis=1) for x, y in zip(*parts))
    return done


def _adaptive_batch(integrand: Integrand, cuts, q, pieces, rtol, offset_total, offset_l1):
    """One pass of :func:`_adaptive`: every round bisects the unfinished panels of every q at once.

    Each q stops when it converges; it fails (ConvergenceError naming it) when it would evaluate more than
    ``_PANELS_PER_Q`` panels in all or needs more than ``_MAX_ROUNDS`` bisections, whatever the other q do.
    Returns None when a round would hold more than ``_IN_FLIGHT`` panels of a batch of several q.
    """
    s = np.sqrt(q)
    m = len(integrand.labels)
    a, b, owner = _initial_panels(cuts, s, pieces, getattr(integrand, "features", ()))

    def per_q(v: np.ndarray) -> np.ndarray:
        return np.stack([np.bincount(owner, w, q.size) for w in v])

    total = np.zeros((m, q.size))
    error = np.zeros((m, q.size))
    rounding = np.zeros((m, q.size))  # kept out of the refinement test: bisection cannot reduce it
    l1 = np.zeros((m, q.size))
    used = np.zeros(q.size, dtype=np.int64)  # panels evaluated so far, per q: each q's own budget
    for round_ in range(_MAX_ROUNDS):
        if not a.size:
            break
        if a.size > _IN_FLIGHT and q.size > 1:
            return None
        used += np.bincount(owner, minlength=q.size)
        piece = np.searchsorted(cuts, 0.5 * (a + b) * s[owner])
        order = np.argsort(piece, kind="stable")
        a, b, owner, piece = a[order], b[order], owner[order], piece[order]
        kron, err, absolute, edge, noise = _panel_rule(integrand, a, b, owner, piece, s, q)

        all_total, all_error = offset_total + total + per_q(kron), error + per_q(err)
        all_l1 = offset_l1 + l1 + per_q(absolute)
        _check_tails(edge, all_l1, owner, q, integrand.labels)
        tol = np.maximum(rtol * np.abs(all_total), 100 * _EPS * all_l1)
        # the rounding floor counts against the tolerance of the whole, but not of a panel: bisection cannot
        # reduce it, so where it alone exceeds the tolerance the panels are refined until each meets its share
        converged = np.all(all_error + rounding + per_q(noise) <= tol, axis=0)
        # a panel's share of the tolerance: its share of E|h|, or of the t-range where E|h| is negligible
        share = np.maximum(0.5 * (b - a) / TAIL, absolute / np.where(all_l1 > 0, all_l1, 1.0)[:, owner])
        accept = converged[owner] | np.all(err <= 0.5 * tol[:, owner] * share, axis=0)
        refine = ~accept
        # this q's budget: the next round would take it past _PANELS_PER_Q panels, or past _MAX_ROUNDS rounds
        wanted = np.bincount(owner, refine, q.size)
        broke = (wanted > 0) & ((used + 2 * wanted > _PANELS_PER_Q) | (round_ == _MAX_ROUNDS - 1))
        if broke.any():
            _not_converged(integrand.labels, q, s, broke, err, tol, refine, a, b, owner)

        total += per_q(kron * accept)
        error += per_q(err * accept)
        rounding += per_q(noise * accept)
        l1 += per_q(absolute * accept)
        mid = 0.5 * (a + b)
        a, b, owner, mid = a[refine], b[refine], owner[refine], mid[refine]
        a, b, owner = np.concatenate([a, mid]), np.concatenate([mid, b]), np.concatenate([owner, owner])
    return total, error + rounding, l1


def _not_converged(labels, q, s, broke, err, tol, refine, a, b, owner) -> NoReturn:
    """ConvergenceError at the q out of budget whose worst unfinished panel is furthest from its tolerance."""
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.max(err / np.maximum(tol[:, owner], _TINY), axis=0)
    ratio = np.where(refine & broke[owner], ratio, -np.inf)
    worst = int(np.argmax(ratio))
    j = int(np.argmax(err[:, worst] / np.maximum(tol[:, owner[worst]], _TINY)))
    raise ConvergenceError(
        f"E[{labels[j]}] did not converge at q = {q[owner[worst]]:g} near "
        f"z = {0.5 * (a[worst] + b[worst]) * s[owner[worst]]:.6g}: the integrand is probably singular there, and "
        "the expectation infinite or, for an integrable singularity, beyond double-precision quadrature "
        "(try method='high_precision')"
    )


def _check_tails(edge, l1, owner, q, labels) -> None:
    """Truncating at |t| = T is exact only if the integrand has decayed there."""
    bad = edge > 1e-15 * l1[:, owner]
    if bad.any():
        j, p = (int(i[0]) for i in np.nonzero(bad))
        qq = q[owner[p]]
        raise DivergenceError(
            f"E[{labels[j]}] at q = {qq:g}: the integrand has not decayed at |z| = {TAIL * np.sqrt(qq):.4g} "
            "(38.5 standard deviations); it grows too fast for the Gaussian weight, so the expectation "
            "diverges or leaves the double range"
        )

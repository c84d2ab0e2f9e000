"""Direct 2-D Gaussian integration in mpmath, independent of gainderive's kernel code.

E[f(u) g(v)] with u = sqrt(q1) x, v = sqrt(q2) (c x + s y), s = sqrt(1 - c^2), x, y
standard normal, as a product Gauss-Legendre rule on [-L, L]^2 (L = 13: the
Gaussian weight beyond is below 1e-37), panels split at the kinks of f (in x)
and of g (in y, for each x), panels at most ``width`` (3) wide with 24 and then 48
Gauss-Legendre nodes.  Two node counts are compared: agreement to the
requested digits is the evidence of convergence.
"""

import mpmath as mp
from mpmath.calculus.quadrature import GaussLegendre

L = 13


def _panels(points, width):
    inside = sorted({mp.mpf(p) for p in points if -L < p < L} | {mp.mpf(-L), mp.mpf(L)})
    out = []
    for a, b in zip(inside, inside[1:]):
        n = int(mp.ceil((b - a) / width))
        out += [(a + (b - a) * k / n, a + (b - a) * (k + 1) / n) for k in range(n)]
    return out


def _rule(f, points, nodes, width):
    total = mp.mpf(0)
    for a, b in _panels(points, width):
        mid, half = (a + b) / 2, (b - a) / 2
        total += half * mp.fsum(w * f(mid + half * t) for t, w in nodes)
    return total


def kernel(f, g, q1, q2, c, *, f_kinks=(), g_kinks=(), digits=30, width=3):
    """E[f(u) g(v)] to ``digits`` digits (q1, q2, c as decimal strings); raises if two rules disagree.

    ``width`` is the widest panel: narrower for integrands whose analyticity strip is narrow.
    """
    with mp.workdps(digits + 8):
        q1, q2, c = mp.mpf(q1), mp.mpf(q2), mp.mpf(c)
        s = mp.sqrt(1 - c * c)
        r1, r2 = mp.sqrt(q1), mp.sqrt(q2)
        phi = lambda t: mp.exp(-t * t / 2) / mp.sqrt(2 * mp.pi)  # noqa: E731
        results = []
        for degree in (4, 5):  # 24 and 48 nodes per panel
            nodes = GaussLegendre(mp.mp).calc_nodes(degree, mp.mp.prec)

            def inner(x, nodes=nodes):
                return _rule(lambda y: g(r2 * (c * x + s * y)) * phi(y), [(k / r2 - c * x) / s for k in g_kinks],
                             nodes, width)

            results.append(_rule(lambda x: f(r1 * x) * inner(x) * phi(x), [k / r1 for k in f_kinks], nodes, width))
        assert abs(results[0] - results[1]) <= mp.mpf(10) ** (-digits) * max(1, abs(results[1])), results
        return results[1]

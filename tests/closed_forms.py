"""Moments derived by hand, evaluated in mpmath: references independent of gainderive's code.

For z ~ N(0, q), s = sqrt(q), phi/Phi the standard normal pdf/cdf; each line is a
textbook Gaussian integral (truncated moments, E[e^{tz} 1{z<0}] = e^{t^2 q/2} Phi(-t s)).
"""

import mpmath as mp


def _phi(x):
    return mp.npdf(x)


def _Phi(x):  # noqa: N802
    return mp.ncdf(x)


def closed_form(name, q, a=None):
    """(E f, E f^2, E f'^2) for the activations with elementary closed forms."""
    q = mp.mpf(q)
    s = mp.sqrt(q)
    if name == "identity":
        return mp.mpf(0), q, mp.mpf(1)
    if name == "relu":  # He et al. 2015: E f^2 = q/2
        return s / mp.sqrt(2 * mp.pi), q / 2, mp.mpf(1) / 2
    if name == "prelu":  # f = x (x > 0), a x (x < 0)
        return (1 - a) * s / mp.sqrt(2 * mp.pi), (1 + a * a) * q / 2, (1 + a * a) / 2
    if name == "abs":
        return s * mp.sqrt(2 / mp.pi), q, mp.mpf(1)
    if name == "elu":  # alpha = 1: E[(e^z - 1)^k 1{z<0}] expanded into E[e^{jz} 1{z<0}] = e^{j^2 q/2} Phi(-j s)
        mean = s / mp.sqrt(2 * mp.pi) + mp.exp(q / 2) * _Phi(-s) - mp.mpf(1) / 2
        second = q / 2 + mp.exp(2 * q) * _Phi(-2 * s) - 2 * mp.exp(q / 2) * _Phi(-s) + mp.mpf(1) / 2
        return mean, second, mp.mpf(1) / 2 + mp.exp(2 * q) * _Phi(-2 * s)
    if name == "sin":  # E cos(2z) = e^{-2q}
        return mp.mpf(0), (1 - mp.exp(-2 * q)) / 2, (1 + mp.exp(-2 * q)) / 2
    if name == "erf":  # Williams 1997; f'^2 = (4/pi) e^{-2z^2}
        return mp.mpf(0), 2 / mp.pi * mp.asin(2 * q / (1 + 2 * q)), 4 / mp.pi / mp.sqrt(1 + 4 * q)
    if name == "hardtanh":  # clip(z, -1, 1): E[z^2 1{|z|<c}] = q (2 Phi(c/s) - 1 - 2 (c/s) phi(c/s))
        c = 1 / s
        inside = 2 * _Phi(c) - 1
        return mp.mpf(0), q * (inside - 2 * c * _phi(c)) + (1 - inside), inside
    raise KeyError(name)


def elu_like(q, alpha, t=1, scale=1):
    """(E f, E f^2, E f'^2) of f = scale (z if z > 0 else alpha (e^{t z} - 1)), q an mpf.

    ELU (t = 1; Clevert et al. 2016), CELU (t = 1/alpha; Barron 2017), SELU (scale and alpha of Klambauer et al.
    2017): E[(e^{tz} - 1)^k 1{z<0}] expanded into E[e^{jtz} 1{z<0}] = e^{j^2 t^2 q/2} Phi(-j t s).
    """
    s = mp.sqrt(q)
    one = mp.exp(t * t * q / 2) * _Phi(-t * s)
    two = mp.exp(2 * t * t * q) * _Phi(-2 * t * s)
    mean = s / mp.sqrt(2 * mp.pi) + alpha * (one - mp.mpf(1) / 2)
    second = q / 2 + alpha**2 * (two - 2 * one + mp.mpf(1) / 2)
    derivative = mp.mpf(1) / 2 + (alpha * t) ** 2 * two
    return scale * mean, scale**2 * second, scale**2 * derivative


def gelu(q):
    """(E f, E f^2, E f'^2) of GELU, f = z Phi(z) (Hendrycks & Gimpel 2016), q an mpf.

    By Stein's lemma and the bivariate-normal orthant probability: with r = sqrt(1 + 2q), theta = atan(q / r).
    """
    r = mp.sqrt(1 + 2 * q)
    theta = mp.atan(q / r)
    mean = q / mp.sqrt(2 * mp.pi * (1 + q))
    second = q / 4 + q * theta / (2 * mp.pi) + q**2 / (mp.pi * (1 + q) * r)
    derivative = mp.mpf(1) / 4 + theta / (2 * mp.pi) + q / (mp.pi * (1 + q) * r) + q / (2 * mp.pi * r**3)
    return mean, second, derivative

"""pytest plugin (entry point ``pytest11``): the ``derivation`` fixture, active once gainderive is installed.

    def test_he_initialisation(derivation):
        derivation.gain("relu", "sqrt(2)")                       # He et al. 2015: Var w = 2 / fan_in
        derivation.moment("relu", "second_moment", "q/2")

Every pytest run in an environment with gainderive installed imports this module, so it imports nothing of
gainderive's engine (sympy, scipy, mpmath, numpy): :mod:`gainderive.testing` loads when a check runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .testing import Verified

__all__ = ["Derivations", "derivation"]


class Derivations:
    """The fixture's checks: :func:`gainderive.testing.assert_moment` and :func:`~gainderive.testing.assert_gain`."""

    def moment(self, activation: Any, moment: str, expected: Any, **options: Any) -> Verified:
        __tracebackhide__ = True  # a failure shows the test's line and the side-by-side report
        from .testing import assert_moment

        return assert_moment(activation, moment, expected, **options)

    def gain(self, activation: Any, expected: Any, **options: Any) -> Verified:
        __tracebackhide__ = True
        from .testing import assert_gain

        return assert_gain(activation, expected, **options)


@pytest.fixture
def derivation() -> Derivations:
    """Check hand-derived Gaussian moments and gains; a refuted claim fails the test with a side-by-side report."""
    return Derivations()

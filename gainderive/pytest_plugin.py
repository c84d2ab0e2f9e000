"""pytest plugin (entry point ``pytest11``): the ``derivation`` fixture, active once gainderive is installed.

    def test_he_initialisation(derivation):
        derivation.gain("relu", "sqrt(2)")                       # He et al. 2015: Var w = 2 / fan_in
        derivation.moment("relu", "second_moment", "q/2")
"""

from __future__ import annotations

from typing import Any

import pytest

from .testing import Verified, assert_gain, assert_moment

__all__ = ["Derivations", "derivation"]


class Derivations:
    """The fixture's checks: :func:`gainderive.testing.assert_moment` and :func:`~gainderive.testing.assert_gain`."""

    def moment(self, activation: Any, moment: str, expected: Any, **options: Any) -> Verified:
        return assert_moment(activation, moment, expected, **options)

    def gain(self, activation: Any, expected: Any, **options: Any) -> Verified:
        return assert_gain(activation, expected, **options)


@pytest.fixture
def derivation() -> Derivations:
    """Check hand-derived Gaussian moments and gains; a refuted claim fails the test with a side-by-side report."""
    return Derivations()

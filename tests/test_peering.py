"""maap.peering: the priorities and settings replicas of `maap operator` peer with."""

from __future__ import annotations

import time

import kopf
from maap import peering


def test_a_later_replica_ranks_below_an_earlier_one_and_below_any_explicit_priority() -> None:
    first = peering.default_priority()
    time.sleep(0.002)
    second = peering.default_priority()
    # Kopf pauses every replica that shares the top priority: they must differ.
    assert second < first < 0


def test_configure_sets_the_lifetime_a_dead_replica_is_detected_within() -> None:
    settings = kopf.OperatorSettings()
    assert settings.peering.lifetime == 60  # kopf's default: up to a minute to take over
    peering.configure(settings)
    assert settings.peering.lifetime == peering.LIFETIME_SECONDS == 15


def test_namespace_patterns_are_left_to_kopf() -> None:
    assert not peering._is_pattern("team-a")
    assert all(peering._is_pattern(p) for p in ("team-*", "!kube-system", "a,b", "t[ab]"))

"""How many threads a model load asks for: the affinity, capped by a cgroup CPU quota."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from maap_trainer import cpus


@pytest.fixture
def cgroup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(cpus, "CGROUP_V2_MAX", tmp_path / "cpu.max")
    monkeypatch.setattr(cpus, "CGROUP_V1_QUOTA", tmp_path / "cpu.cfs_quota_us")
    monkeypatch.setattr(cpus, "CGROUP_V1_PERIOD", tmp_path / "cpu.cfs_period_us")
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)))
    return tmp_path


def test_no_quota_means_every_cpu_of_the_affinity(cgroup: Path) -> None:
    assert cpus.usable_cpus() == 16
    (cgroup / "cpu.max").write_text("max 100000\n")
    assert cpus.usable_cpus() == 16
    (cgroup / "cpu.max").unlink()
    (cgroup / "cpu.cfs_quota_us").write_text("-1\n")
    (cgroup / "cpu.cfs_period_us").write_text("100000\n")
    assert cpus.usable_cpus() == 16


def test_a_pods_cpu_limit_caps_the_threads(cgroup: Path) -> None:
    (cgroup / "cpu.max").write_text("200000 100000\n")  # cgroup v2: limits.cpu 2
    assert cpus.usable_cpus() == 2
    (cgroup / "cpu.max").write_text("50000 100000\n")  # 500m: still one thread
    assert cpus.usable_cpus() == 1
    (cgroup / "cpu.max").unlink()
    (cgroup / "cpu.cfs_quota_us").write_text("150000\n")  # cgroup v1: 1.5 CPUs
    (cgroup / "cpu.cfs_period_us").write_text("100000\n")
    assert cpus.usable_cpus() == 2


def test_the_affinity_caps_a_larger_quota(cgroup: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1})
    (cgroup / "cpu.max").write_text("800000 100000\n")
    assert cpus.usable_cpus() == 2

"""``drhost doctor``: what this machine gives each plugin class, and what each mechanism does not guarantee."""

from __future__ import annotations

import json
import os
import pwd
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from drhost.cli._doctor import doctor_report
from drhost.config import load_config
from drhost.supervisor._cgroups import probe_cgroups

Drhost = Callable[..., subprocess.CompletedProcess[str]]
MISSING = probe_cgroups().missing()
needs_cgroups = pytest.mark.skipif(bool(MISSING), reason=f"cgroups cannot be created here: {MISSING}")


@needs_cgroups
@pytest.mark.cgroups
def test_doctor_json_reports_cgroup_v1_and_the_limits_of_each_class(drhost: Drhost) -> None:
    """doctor --json exits 0 with one object: cgroup v1 with memory/cpu/pids usable, each class's mechanisms."""
    done = drhost("doctor", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["cgroups"]["version"] == 1 and report["cgroups"]["mode"] == "auto"
    for controller in ("memory", "cpu", "pids"):
        assert report["cgroups"]["controllers"][controller]["usable"], report["cgroups"]
    business = report["classes"]["business"]
    assert business["isolation"] == "process"
    assert business["limits"]["memory"] == "cgroup v1 memory.limit_in_bytes=268435456"
    assert business["limits"]["cpu"] == "cgroup v1 cfs 30%"
    assert business["limits"]["pids"] == "cgroup v1 pids.max=64"
    assert business["limits"]["nofile"] == "rlimit 256"
    assert any(c.startswith("memory: counts the page cache") for c in business["not_guaranteed"])
    assert report["classes"]["core"]["isolation"] == "thread"
    assert "no memory, CPU or process limit" in report["classes"]["core"]["not_guaranteed"][0]
    assert report["podman"]["present"] == (report["podman"]["path"] is not None)
    assert isinstance(report["container"]["available"], bool) and report["container"]["detail"]
    leftovers = [p for base in probe_cgroups().bases.values() for p in (base / "drhost").glob("doctor_*")]
    assert leftovers == []  # the probe's and the classes' cgroups are all removed


def test_doctor_without_cgroups_names_what_rlimits_do_not_guarantee(drhost: Drhost) -> None:
    """With [process] cgroups = off, process classes show rlimits and say that setsid() escapes the kill."""
    done = drhost("doctor", "--json", "--set", "process.cgroups=off")
    assert done.returncode == 0, done.stderr
    business = json.loads(done.stdout)["classes"]["business"]
    assert business["limits"]["mechanism"] == "rlimit"
    assert any("setsid()" in c and "survives" in c for c in business["not_guaranteed"])
    assert any(c.startswith("memory: RLIMIT_AS bounds address space") for c in business["not_guaranteed"])


@needs_cgroups
@pytest.mark.cgroups
def test_doctor_text_exits_zero_and_names_the_cgroup_version(drhost: Drhost) -> None:
    """Plain doctor prints the cgroup version, each controller, podman and every class, and exits 0."""
    done = drhost("doctor")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("cgroups: v1 ([process] cgroups = auto)")
    for text in ("  memory   usable under", "podman:", "class business: isolation process",
                 "  memory: cgroup v1 memory.limit_in_bytes=268435456", "does not guarantee - "):
        assert text in done.stdout, text


def test_doctor_reports_only_the_isolation_kinds_this_build_has(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    """Without the container kind in the isolation registry, doctor has no podman or container section."""
    monkeypatch.setenv("DRHOST_STATE_DIR", str(tmp_path))
    from drhost.supervisor import ISOLATION_KINDS

    monkeypatch.delitem(ISOLATION_KINDS, "container")
    config = load_config([], ["class.third_party.isolation=process"]).data
    report = doctor_report(config)
    assert "container" not in report and "podman" not in report
    assert set(report["classes"]) == {"core", "business", "database", "third_party"}


@needs_cgroups
@pytest.mark.skipif(os.geteuid() != 0, reason="process workers are confined by a root drhost")
@pytest.mark.cgroups
def test_doctor_states_only_what_a_live_worker_of_each_process_class_proved(drhost: Drhost) -> None:
    """For process classes doctor starts a real confined worker and reports what it was refused, as that worker."""
    worker = pwd.getpwnam("drhost-worker")
    report = json.loads(drhost("doctor", "--json").stdout)
    for name in ("business", "database"):
        proven = report["classes"][name]["proven"]
        assert proven["worker"] == "started"
        assert proven["identity"].startswith(f"uid {worker.pw_uid} (drhost-worker), capabilities none")
        assert set(proven["namespaces"]) == {"mount", "ipc", "pid", "net"}
        refused = proven["refused"]
        assert refused["create a file in /"] == "EROFS" and refused["connect to 1.1.1.1:53"] == "ENETUNREACH"
        assert [v for k, v in refused.items() if k.startswith("move itself to the parent cgroup")] == ["EROFS"]
        caveats = report["classes"][name]["not_guaranteed"]
        assert any(c.startswith("confinement: the host stays readable") for c in caveats)
    assert "proven" not in report["classes"]["core"] and "proven" not in report["classes"]["third_party"]

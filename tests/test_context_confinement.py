"""The confined Context: file operations stay in the product root and the plugin's declared paths,
a third_party plugin runs only the commands it declares (issue 13, item 5)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from cli_helpers import run_json
from drhost.context import HostContext
from drhost.transport import LocalSession, SshSession, SshTarget, TargetSession
from drhost_hookspecs import PackageInfo, PluginClass, PluginDefinitionError, PluginInfo, StepFailed, TargetInfo
from plugin_factory import make_plugin, make_source_tree, simple_plugin
from plugin_test_helpers import failures, plugin_test, results
from sshd_hosts import SshHost
from state_rows import read_state

Refusals = list[tuple[str, dict[str, str]]]


def confined(root: Path | str, *, plugin: str = "dr-x", plugin_class: PluginClass = PluginClass.BUSINESS,
             paths: Sequence[str] = (), commands: Sequence[str] = (), session: TargetSession | None = None,
             refusals: Refusals | None = None, package_path: str = "/nonexistent/pkg.tar.gz") -> HostContext:
    """A HostContext as Executor.call builds it, on a local (or the given) session."""
    sink = refusals if refusals is not None else []

    def on_refused(message: str, refused: Mapping[str, str]) -> None:
        sink.append((message, dict(refused)))

    return HostContext(
        session=session or LocalSession("t"), run_id="run-test",
        target=TargetInfo(name="t", host="localhost", transport="local", install_root=str(root),
                          work_dir=f"{root}/.drhost/run-test"),
        package=PackageInfo(product="drproduct", version="2.0.0", upgrades_from=("1.0.0",), local_path=package_path,
                            remote_path=f"{root}/staging/pkg.tar.gz", sha256="0" * 64, size=1),
        config={}, state={}, notify=lambda method, args: None, persist=lambda state: None,
        cancel=threading.Event(), deadline=time.monotonic() + 30, logger=logging.getLogger("test.confinement"),
        plugin=plugin, plugin_class=plugin_class, paths=paths, commands=commands, on_refused=on_refused,
    )


def outside_message(plugin: str, call: str, root: Path | str, declared: str = "none") -> str:
    return (f"{plugin}: {call} refused: outside the product root {root} and the plugin's declared paths "
            f"({declared}); declare it in PluginInfo(paths=...)")


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path]:
    """(root, outside): an install root and a directory next to it, each with a file in it."""
    root = tmp_path / "opt" / "drproduct"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "drproduct.ini").write_text("[service]\nport = 1\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret\n")
    return root, outside


# ---------------------------------------------------------------------------------------------------- paths


def test_write_outside_the_root_is_refused_naming_plugin_and_path(world: tuple[Path, Path]) -> None:
    """A write outside the install root is refused, not retryable, naming plugin, call, root and what to declare."""
    root, outside = world
    refusals: Refusals = []
    ctx = confined(root, refusals=refusals)
    target = outside / "passwd"
    with pytest.raises(StepFailed) as caught:
        ctx.write_text(str(target), "root::0:0::/:/bin/sh\n")
    assert caught.value.retryable is False
    assert str(caught.value) == outside_message("dr-x", f"write_text({str(target)!r})", root)
    assert not target.exists()
    assert refusals == [(str(caught.value), {"kind": "path", "method": "write_text", "value": str(target)})]


@pytest.mark.parametrize("method", ["read_text", "exists", "remove", "write_text", "put"])
def test_every_file_operation_is_confined(world: tuple[Path, Path], tmp_path: Path, method: str) -> None:
    """read_text, exists, remove, write_text and put's target path are each refused outside the root."""
    root, outside = world
    secret = outside / "secret"
    local = tmp_path / "pkg.tar.gz"
    local.write_bytes(b"package")
    ctx = confined(root)
    calls: dict[str, Callable[[], object]] = {
        "read_text": lambda: ctx.read_text(str(secret)),
        "exists": lambda: ctx.exists(str(secret)),
        "remove": lambda: ctx.remove(str(secret)),
        "write_text": lambda: ctx.write_text(str(secret), "changed\n"),
        "put": lambda: ctx.put(str(local), str(secret)),
    }
    with pytest.raises(StepFailed, match=r"refused: outside the product root") as caught:
        calls[method]()
    assert f"dr-x: {method}(" in str(caught.value) and caught.value.retryable is False
    assert secret.read_text() == "secret\n"


def test_inside_the_root_every_operation_works(world: tuple[Path, Path], tmp_path: Path) -> None:
    """Inside the install root write, read, exists, put and remove all work as before."""
    root, _ = world
    local = tmp_path / "pkg.tar.gz"
    local.write_bytes(b"package")
    ctx = confined(root)
    ctx.write_text(f"{root}/var/new/file.txt", "hello\n")
    assert ctx.read_text(f"{root}/var/new/file.txt") == "hello\n"
    ctx.put(str(local), f"{root}/staging/pkg.tar.gz")
    assert (root / "staging" / "pkg.tar.gz").read_bytes() == b"package"
    ctx.remove(f"{root}/var/new", recursive=True)
    assert not ctx.exists(f"{root}/var/new") and ctx.exists(f"{root}/etc/drproduct.ini")


def test_dotdot_is_normalised_before_the_check(world: tuple[Path, Path]) -> None:
    """``..`` is resolved as text first: ROOT/../../outside is refused, ROOT/a/../b is ROOT/b."""
    root, outside = world
    ctx = confined(root)
    escape = f"{root}/../../outside/secret"
    with pytest.raises(StepFailed) as caught:
        ctx.write_text(escape, "changed\n")
    assert str(caught.value) == outside_message("dr-x", f"write_text({escape!r})", root)
    assert (outside / "secret").read_text() == "secret\n"
    ctx.write_text(f"{root}/a/../b.txt", "b\n")
    assert (root / "b.txt").read_text() == "b\n" and not (root / "a").exists()


@pytest.mark.parametrize(("path", "reason"), [
    ("etc/drproduct.ini", "not an absolute path"),
    ("", "expected a non-empty path"),
    ("/opt/drproduct/etc/x\0y", "the path contains a NUL byte"),
])
def test_relative_empty_and_nul_paths_are_refused(world: tuple[Path, Path], path: str, reason: str) -> None:
    """A relative path, an empty one and one with a NUL byte are refused before anything reaches the target."""
    root, _ = world
    ctx = confined(root)
    with pytest.raises(StepFailed) as caught:
        ctx.read_text(path)
    assert caught.value.retryable is False and reason in str(caught.value)
    assert str(caught.value).startswith(f"dr-x: read_text({path!r}) refused: ")


def test_symlink_out_of_the_root_is_refused(world: tuple[Path, Path]) -> None:
    """A symlink in the root pointing outside is resolved on the target: writes and reads through it are refused."""
    root, outside = world
    (root / "logs").symlink_to(outside, target_is_directory=True)
    (root / "etc" / "shadow").symlink_to(outside / "secret")
    ctx = confined(root)
    with pytest.raises(StepFailed) as caught:
        ctx.write_text(f"{root}/logs/new.log", "x\n")
    assert f"(it resolves to {outside}/new.log on the target)" in str(caught.value)
    assert "outside the product root" in str(caught.value) and caught.value.retryable is False
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]
    with pytest.raises(StepFailed, match=r"resolves to .*/outside/secret on the target"):
        ctx.read_text(f"{root}/etc/shadow")


def test_last_component_is_checked_where_it_lives(world: tuple[Path, Path]) -> None:
    """A path whose target is inside the root but whose last component lives outside (parent link) is refused."""
    root, outside = world
    (root / "real").write_text("mine\n")
    (outside / "victim").symlink_to(root / "real")  # a link outside, pointing into the root
    (root / "d").symlink_to(outside, target_is_directory=True)
    ctx = confined(root)
    with pytest.raises(StepFailed) as caught:
        ctx.remove(f"{root}/d/victim")  # would unlink OUTSIDE/victim
    assert f"(it resolves to {outside}/victim on the target)" in str(caught.value)
    assert (outside / "victim").is_symlink() and (root / "real").read_text() == "mine\n"


def test_symlinks_inside_the_root_are_fine(world: tuple[Path, Path]) -> None:
    """A relative link inside the root (current -> releases/1.0.0) may be used like any directory."""
    root, _ = world
    (root / "releases" / "1.0.0").mkdir(parents=True)
    (root / "current").symlink_to("releases/1.0.0")
    ctx = confined(root)
    ctx.write_text(f"{root}/current/VERSION", "1.0.0\n")
    assert (root / "releases" / "1.0.0" / "VERSION").read_text() == "1.0.0\n"
    assert ctx.read_text(f"{root}/current/VERSION") == "1.0.0\n"


def test_a_root_that_is_a_symlink_works(tmp_path: Path) -> None:
    """An install root that is itself a symlink (/opt/drproduct -> /data/drproduct) is followed, not refused."""
    real = tmp_path / "data" / "drproduct"
    real.mkdir(parents=True)
    root = tmp_path / "drproduct-link"
    root.symlink_to(real, target_is_directory=True)
    ctx = confined(root)
    ctx.write_text(f"{root}/etc/x.ini", "x\n")
    assert (real / "etc" / "x.ini").read_text() == "x\n"


def test_declared_directory_allows_below_it_only(world: tuple[Path, Path], tmp_path: Path) -> None:
    """A declared directory allows everything below it, not a sibling sharing its name as a prefix."""
    root, outside = world
    ctx = confined(root, paths=(str(outside),))
    ctx.write_text(f"{outside}/sub/agent.log", "ok\n")
    assert (outside / "sub" / "agent.log").read_text() == "ok\n"
    sibling = tmp_path / "outside-other" / "x"
    with pytest.raises(StepFailed) as caught:
        ctx.write_text(str(sibling), "x\n")
    assert str(caught.value) == outside_message("dr-x", f"write_text({str(sibling)!r})", root, str(outside))
    assert not sibling.exists()


def test_declared_file_allows_that_file_only(world: tuple[Path, Path]) -> None:
    """A declared file may be written; the file next to it may not."""
    root, outside = world
    ctx = confined(root, paths=(f"{outside}/agent.conf",))
    ctx.write_text(f"{outside}/agent.conf", "a=1\n")
    assert (outside / "agent.conf").read_text() == "a=1\n"
    with pytest.raises(StepFailed, match="refused"):
        ctx.write_text(f"{outside}/agent.conf.bak", "a=1\n")
    assert not (outside / "agent.conf.bak").exists()


def test_root_placeholder_declares_where_a_link_in_the_root_leads(world: tuple[Path, Path]) -> None:
    """``{root}/data`` declared: a link ROOT/data -> elsewhere may be used; undeclared it is refused."""
    root, outside = world
    (root / "data").symlink_to(outside, target_is_directory=True)
    with pytest.raises(StepFailed, match="resolves to"):
        confined(root).write_text(f"{root}/data/catalog.db", "db\n")
    assert not (outside / "catalog.db").exists()
    confined(root, paths=("{root}/data",)).write_text(f"{root}/data/catalog.db", "db\n")
    assert (outside / "catalog.db").read_text() == "db\n"


def test_worker_requests_are_confined_through_dispatch(world: tuple[Path, Path]) -> None:
    """A sandboxed worker's write_text request (dispatch) is refused like a thread plugin's call."""
    root, outside = world
    ctx = confined(root, plugin="dr-worker")
    with pytest.raises(StepFailed) as caught:
        ctx.dispatch("write_text", {"path": f"{outside}/secret", "text": "changed\n"})
    assert str(caught.value).startswith(f"dr-worker: write_text('{outside}/secret') refused: outside")
    assert (outside / "secret").read_text() == "secret\n"


# ------------------------------------------------------------------------------------------------- commands


def test_third_party_runs_only_declared_commands(world: tuple[Path, Path]) -> None:
    """A third_party plugin runs a declared argv[0] (``{root}`` substituted, exact match) and nothing else."""
    root, _ = world
    tool = root / "bin" / "tool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\necho tool ran\n")
    tool.chmod(0o755)
    refusals: Refusals = []
    ctx = confined(root, plugin="dr-vendor", plugin_class=PluginClass.THIRD_PARTY,
                   commands=("{root}/bin/tool", "true"), refusals=refusals)
    assert ctx.run([str(tool)]).stdout == "tool ran\n"
    assert ctx.run(["true"]).ok
    with pytest.raises(StepFailed) as caught:
        ctx.run(["id", "-u"])
    assert caught.value.retryable is False
    assert str(caught.value) == (f"dr-vendor: run('id') refused: a third_party plugin may run only the commands it "
                                 f"declares ({root}/bin/tool, true); declare it in PluginInfo(commands=...)")
    with pytest.raises(StepFailed, match=r"run\('/bin/true'\) refused"):
        ctx.run(["/bin/true"])  # "true" is declared, "/bin/true" is another argv[0]
    assert [r[1] for r in refusals] == [{"kind": "command", "method": "run", "value": "id"},
                                        {"kind": "command", "method": "run", "value": "/bin/true"}]


@pytest.mark.parametrize("variable", ["PATH", "LD_PRELOAD"])
def test_third_party_may_not_choose_what_a_declared_command_runs(world: tuple[Path, Path], variable: str) -> None:
    """A third_party plugin may not set PATH or LD_* for a declared command."""
    root, _ = world
    ctx = confined(root, plugin_class=PluginClass.THIRD_PARTY, commands=("true",))
    with pytest.raises(StepFailed, match=rf"may not set {variable} "):
        ctx.run(["true"], env={variable: str(root)})


@pytest.mark.parametrize("plugin_class", [PluginClass.CORE, PluginClass.BUSINESS, PluginClass.DATABASE])
def test_other_classes_run_any_command(world: tuple[Path, Path], plugin_class: PluginClass) -> None:
    """Core, business and database plugins are not limited to declared commands."""
    root, _ = world
    assert confined(root, plugin_class=plugin_class).run(["sh", "-c", "echo ran"]).stdout == "ran\n"


# --------------------------------------------------------------------------------------- the declaration


@pytest.mark.parametrize(("field", "value", "wanted"), [
    ("paths", ["var/log"], "expected an absolute path"),
    ("paths", ["/var/../etc"], "'..' is not allowed"),
    ("paths", ["/var/log\0"], "NUL or control character"),
    ("paths", ["/"], "would allow every path"),
    ("paths", ["{install_root}/x"], "the only placeholder is {root}"),
    ("paths", "/var/log", "expected a list or tuple of strings"),
    ("paths", ["/x"] * 65, "65 entries, at most 64"),
    ("paths", ["/" + "a" * 5000], "expected 1 to 4096 characters"),
    ("commands", ["bin/tool"], "expected an absolute path"),
    ("commands", ["rm -rf"], "expected a command name"),
    ("commands", ["{root}/../bin/sh"], "'..' is not allowed"),
])
def test_bad_declarations_break_the_plugin_naming_it(field: str, value: object, wanted: str) -> None:
    """PluginInfo refuses a bad paths/commands entry with a PluginDefinitionError naming the plugin."""
    with pytest.raises(PluginDefinitionError) as caught:
        PluginInfo(name="dr-bad", department="test", plugin_class=PluginClass.BUSINESS,
                   **{field: value})  # type: ignore[arg-type]
    assert caught.value.plugin == "dr-bad" and caught.value.hook == "drhost_plugin_info"
    assert wanted in caught.value.message and f"PluginInfo.{field}" in caught.value.message


def test_declaration_is_normalised_and_travels_as_json() -> None:
    """Declarations are stored normalised, appear in to_json, and from_json gives the same PluginInfo back."""
    info = PluginInfo(name="dr-ok", department="test", plugin_class=PluginClass.THIRD_PARTY,
                      paths=["/var/log/acme/", "{root}/./data"], commands=["stat", "{root}/current/bin/tool"])
    assert info.paths == ("/var/log/acme", "{root}/data")
    assert info.to_json()["paths"] == ["/var/log/acme", "{root}/data"]
    assert info.to_json()["commands"] == ["stat", "{root}/current/bin/tool"]
    assert PluginInfo.from_json(json.loads(json.dumps(info.to_json()))) == info
    assert PluginInfo(name="dr-old", department="t", plugin_class=PluginClass.CORE).to_json()["paths"] == []


# ------------------------------------------------------------------------------------------------------ ssh


@pytest.mark.integration
@pytest.mark.sshd
def test_ssh_target_resolves_symlinks_on_the_target(host: SshHost, world: tuple[Path, Path]) -> None:
    """Over SSH realpath is the server's (SFTP): a link out of the root is refused, the root itself is fine."""
    root, outside = world
    (root / "logs").symlink_to(outside, target_is_directory=True)
    ssh = SshSession(host.name, SshTarget(host.name, host.host, host.port,
                                              key_file=str(host.client_key),
                                              known_hosts=str(host.known_hosts)),
                     run_id="run1", work_dir=f"{root}/.drhost", kill_grace_s=1.0)
    try:
        real_outside = os.path.realpath(outside)
        assert ssh.realpath(f"{root}/logs") == real_outside
        assert ssh.realpath(f"{root}/logs/not/yet/there.log") == f"{real_outside}/not/yet/there.log"
        assert ssh.realpath(f"{root}/etc/drproduct.ini") == os.path.realpath(root / "etc" / "drproduct.ini")
        ctx = confined(root, session=ssh)
        with pytest.raises(StepFailed) as caught:
            ctx.write_text(f"{root}/logs/new.log", "x\n")
        assert f"(it resolves to {real_outside}/new.log on the target)" in str(caught.value)
        assert sorted(p.name for p in outside.iterdir()) == ["secret"]
        ctx.write_text(f"{root}/etc/over-ssh.ini", "ok\n")
        assert (root / "etc" / "over-ssh.ini").read_text() == "ok\n"
    finally:
        ssh.close()


# ------------------------------------------------------------------------------------------- real runs


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines() if line.strip()]


def site_env(site: Path) -> dict[str, str]:
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))}


@pytest.mark.integration
@pytest.mark.parametrize("plugin_class", ["core", "business"])
@pytest.mark.slow
def test_thread_and_process_plugins_are_refused_outside_the_root_in_a_run(
        drhost: Any, tmp_path: Path, plugin_class: str) -> None:
    """In a real demo run a core (thread) and a business (process) plugin's write outside the root is refused:
    the target's record and the journal name the refusal, and nothing is written."""
    name = f"zz-escape-{plugin_class}"
    victim = tmp_path / "outside" / "pwned.txt"
    site = tmp_path / "site"
    make_plugin(site, name, simple_plugin(name, plugin_class, f"ctx.write_text({str(victim)!r}, 'pwned')"))
    proc = drhost("upgrade", "--demo", "--json", "--keep", "--set", "run.forks=3", "--set", "run.kill_grace_s=0.5",
                  env=site_env(site))
    summary = run_json(proc)
    run_dir = Path(summary["run_dir"])
    state, events = read_state(run_dir), read_events(run_dir)
    wanted = f"{name}: write_text({str(victim)!r}) refused: outside the product root "
    assert not victim.exists() and not victim.parent.exists()
    if plugin_class == "core":  # abort: every target is rolled back
        assert proc.returncode == 3, proc.stderr[-3000:]
        assert {t["status"] for t in summary["targets"].values()} == {"rolled_back"}
    else:  # skip_plugin: the upgrade goes on without it
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert {t["status"] for t in summary["targets"].values()} == {"succeeded"}
    for target, record in state["targets"].items():
        root = next(r for r in state["demo"]["roots"] if r.endswith(f"/{target}/opt/drproduct"))
        assert any(wanted + root in str(e.get("message", "")) for e in record["errors"]), record["errors"]
        refused = [e for e in events if e["event"] == "context.refused" and e.get("target") == target]
        assert [(e["plugin"], e["step"], e["data"]["kind"], e["data"]["value"]) for e in refused] == [
            (name, "work", "path", str(victim))]
        failed = [e for e in events if e["event"] == "step.failed" and e.get("target") == target
                  and e.get("plugin") == name]
        assert len(failed) == 1 and wanted + root in failed[0]["message"]  # not retryable: one attempt


THIRD_PARTY = """
NAME = {name!r}

@hookimpl
def drhost_plugin_info():
    return PluginInfo(name=NAME, department="test", plugin_class=PluginClass.THIRD_PARTY,
                      commands=("{{root}}/current/bin/drproductctl",))

def _root(ctx):
    return ctx.target.install_root.rstrip("/")

def declared(ctx):
    result = ctx.run([_root(ctx) + "/current/bin/drproductctl", "--root", _root(ctx), "health"], check=False)
    ctx.write_text(_root(ctx) + "/var/zz-declared.txt", f"{{result.returncode}}\\n{{result.stdout}}")

def undeclared(ctx):
    ctx.run(["id", "-u"])
    ctx.write_text(_root(ctx) + "/var/zz-undeclared.txt", "ran\\n")

@hookimpl
def drhost_stage_steps(stage, register):
    if stage is Stage.POSTCHECK:
        register(Step("declared", declared, retryable=True, timeout_s=60, category=Category.PLUGIN, order=98))
        register(Step("undeclared", undeclared, retryable=True, timeout_s=60, category=Category.PLUGIN, order=99))
"""


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("podman") is None, reason="podman is not installed")
@pytest.mark.podman
@pytest.mark.slow
def test_third_party_plugin_runs_declared_commands_only_in_a_run(drhost: Any, tmp_path: Path) -> None:
    """In a real run a containerised third_party plugin runs its declared command; an undeclared one is refused
    and recorded; ``plugins list`` shows the declaration."""
    name = "zz-vendor"
    site = tmp_path / "site"
    make_plugin(site, name, THIRD_PARTY.format(name=name))
    listed = drhost("plugins", "list", "--json", env=site_env(site))
    assert listed.returncode == 0, listed.stderr[-3000:]
    (row,) = [r for r in json.loads(listed.stdout) if r["name"] == name]
    assert (row["status"], row["isolation"]) == ("ok", "container")
    assert (row["paths"], row["commands"]) == ([], ["{root}/current/bin/drproductctl"])
    table = drhost("plugins", "list", env=site_env(site)).stdout.splitlines()
    header, line = table[0].split(), next(t for t in table if t.startswith(name)).split()
    assert dict(zip(header, line, strict=True))["commands"] == "1" and header[-2:] == ["paths", "commands"]

    proc = drhost("upgrade", "--demo", "--json", "--keep", "--set", "run.forks=3", env=site_env(site))
    summary = run_json(proc)
    assert proc.returncode == 0, proc.stderr[-3000:]  # third_party: the error is recorded, the run goes on
    assert {t["status"] for t in summary["targets"].values()} == {"succeeded"}
    run_dir = Path(summary["run_dir"])
    state, events = read_state(run_dir), read_events(run_dir)
    assert {p["name"]: p["isolation"] for p in state["plan"]["plugins"]}[name] == "container"
    for root in map(Path, state["demo"]["roots"]):
        assert (root / "var" / "zz-declared.txt").read_text().startswith("0\n"), "the declared command ran"
        assert not (root / "var" / "zz-undeclared.txt").exists()
    refused = [e for e in events if e["event"] == "context.refused"]
    assert sorted(e["target"] for e in refused) == sorted(state["targets"])
    assert {(e["plugin"], e["step"], e["data"]["kind"], e["data"]["value"]) for e in refused} == {
        (name, "undeclared", "command", "id")}
    for record in state["targets"].values():
        assert any(f"{name}: run('id') refused: a third_party plugin may run only the commands it declares"
                   in str(e.get("message", "")) for e in record["errors"]), record["errors"]


# ---------------------------------------------------------------------------------------------- plugin-test


@pytest.mark.integration
def test_plugin_test_fails_an_undeclared_path_and_names_what_to_declare(tmp_path: Path) -> None:
    """plugin-test fails declares_effects when a step was refused a path, with a fix naming the path to declare."""
    victim = tmp_path / "elsewhere" / "agent.log"
    name = "zz-undeclared"
    make_source_tree(tmp_path / name, name, simple_plugin(name, "business",
                                                          f"ctx.write_text({str(victim)!r}, 'x')"))
    code, report = plugin_test(tmp_path / name, "--alone", tmp=tmp_path / "work")
    assert code == 1
    assert "declares_effects" in failures(report) and "runs" in failures(report)
    (check,) = results(report, "declares_effects", "fail")
    assert f"write_text({str(victim)!r}) refused" in check["reason"]
    assert f"PluginInfo(paths=[..., {str(victim)!r}])" in check["fix"]
    assert not victim.exists()

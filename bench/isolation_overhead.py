"""Per-launch and per-call overhead of each isolation class, beside the bare peers, in one run.

Run on demand:  python bench/isolation_overhead.py [--launches N] [--calls N] [--set K=V] [--write FILE]

Launch: from nothing to a worker that has said hello (interpreter start, limits, plugin import).
Call: one no-op step through the JSON-lines channel of a warm worker (thread: a direct call).
Peers: `python -c pass` (the interpreter alone) and a bare `podman run ... true` with the same runtime.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from drhost.config import load_config
from drhost.policy import class_policy
from drhost.supervisor import ThreadRunner, WorkerRunner, make_sandbox
from drhost_hookspecs import LoadedPlugin, PackageInfo, PluginClass, Stage, TargetInfo

PLUGIN = '''
from drhost_hookspecs import Category, PluginClass, PluginInfo, Stage, Step, hookimpl

@hookimpl
def drhost_plugin_info():
    return PluginInfo(name="bench-noop", department="bench", plugin_class=PluginClass.{cls})

def noop(ctx):
    ctx.state["n"] = ctx.state.get("n", 0) + 1

@hookimpl
def drhost_stage_steps(stage, register):
    if stage is Stage.UPGRADE:
        register(Step("noop", noop, retryable=True, timeout_s=60, category=Category.PLUGIN))
'''


def install_plugin(site: Path, plugin_class: str) -> None:
    (site / "bench_noop.py").write_text(PLUGIN.format(cls=plugin_class.upper()))
    dist = site / "bench_noop-1.0.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bench-noop\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[drhost.plugins]\nbench-noop = bench_noop\n")
    importlib.invalidate_caches()
    sys.modules.pop("bench_noop", None)


def context(root: Path):  # type: ignore[no-untyped-def]
    import threading

    from drhost.context import HostContext
    from drhost.transport import LocalSession

    return HostContext(
        session=LocalSession("bench"), run_id="bench",
        target=TargetInfo("bench", "localhost", "local", str(root), str(root / "work")),
        package=PackageInfo("p", "2", ("1",), "/nonexistent", "", "0" * 64, 0), config={}, state={},
        notify=lambda method, args: None, persist=lambda state: None, cancel=threading.Event(),
        deadline=time.monotonic() + 3600, logger=logging.getLogger("bench"),
    )


def timed(func: Callable[[], object], count: int) -> list[float]:
    samples = []
    for _ in range(count):
        started = time.perf_counter()
        func()
        samples.append(time.perf_counter() - started)
    return samples


def worker_numbers(isolation: str, plugin_class: str, launches: int, calls: int, root: Path,
                   config: dict[str, object]) -> tuple[list[float], list[float], dict[str, object]]:
    policy = class_policy(config, PluginClass(plugin_class))
    launch_samples: list[float] = []
    call_samples: list[float] = []
    limits: dict[str, object] = {}
    for index in range(launches):
        sandbox = make_sandbox(policy, label=f"bench/{isolation}/{index}", message_limit=4 * 1024 * 1024,
                               config=config)
        runner = WorkerRunner("bench-noop", sandbox=sandbox, logger=logging.getLogger("bench"), grace_s=2)
        try:
            launch_samples.extend(timed(runner.start, 1))
            limits = sandbox.in_force()
            if index == 0:
                ctx = context(root)

                def call(runner: WorkerRunner = runner, ctx: object = ctx) -> object:
                    return runner.call("run_step", ctx, stage=Stage.UPGRADE, step="noop", timeout_s=60)  # type: ignore[arg-type]

                call()
                call_samples = timed(call, calls)
        finally:
            runner.close()
    return launch_samples, call_samples, limits


def ms(samples: list[float]) -> str:
    if not samples:
        return "—"
    return f"{statistics.median(samples) * 1000:.1f}"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--launches", type=int, default=10)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--write", type=Path, help="append the results to this markdown file")
    parser.add_argument("--set", action="append", default=[], help="config override, as for drhost")
    args = parser.parse_args()

    os.environ.setdefault("DRHOST_STATE_DIR", tempfile.mkdtemp(prefix="drhost-bench-"))
    site = Path(tempfile.mkdtemp(prefix="drhost-bench-site-"))
    site.chmod(0o755)  # mkdtemp makes it 0700: process workers (drhost-worker) must be able to read the plugin
    root = Path(tempfile.mkdtemp(prefix="drhost-bench-target-"))
    sys.path.insert(0, str(site))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    config = load_config(overrides=args.set).data
    rows: list[tuple[str, str, str, str]] = []

    python_pass = timed(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), args.launches)
    rows.append(("peer: `python -c pass`", ms(python_pass), "—", "interpreter start only"))

    install_plugin(site, "core")
    plugin = LoadedPlugin.from_entry_point("bench-noop")
    thread = ThreadRunner(plugin)
    ctx = context(root)
    thread_calls = timed(lambda: thread.call("run_step", ctx, stage=Stage.UPGRADE, step="noop", timeout_s=60),
                         args.calls)
    rows.append(("thread (core)", "0 (in the host)", f"{statistics.median(thread_calls) * 1000:.3f}", "no isolation"))

    for isolation, plugin_class in (("process", "business"), ("container", "third_party")):
        if isolation == "container" and config["classes"]["third_party"]["isolation"] != "container":
            continue
        install_plugin(site, plugin_class)
        try:
            launch, calls, limits = worker_numbers(isolation, plugin_class, args.launches, args.calls, root, config)
        except Exception as exc:  # a benchmark reports what it could not measure
            rows.append((f"{isolation} ({plugin_class})", f"not measured: {exc}", "—", "—"))
            continue
        mechanism = ", ".join(f"{k}={v}" for k, v in limits.items() if k in ("mechanism", "memory", "network",
                                                                           "runtime"))
        rows.append((f"{isolation} ({plugin_class})", ms(launch), ms(calls), mechanism or str(limits)[:80]))
        if isolation == "container":
            from drhost.supervisor._podman import podman_setup, probe_command

            setup = podman_setup(config)
            # The same bare container drhost probes the runtime with: rootfs, /usr, --init, no network.
            bare_argv = probe_command(setup.podman, setup.runtime, config["container"],
                                      Path(setup.rootfs) if setup.rootfs else None)
            bare = timed(lambda argv=bare_argv: subprocess.run(argv, check=True, capture_output=True), args.launches)
            rows.append(("peer: bare `podman run … true`", ms(bare), "—", "same runtime and rootfs"))

    header = "| isolation | launch, median ms | call, median ms | limits |\n|---|---|---|---|"
    lines = [header, *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows)]
    by = {r[0]: r for r in rows}
    ratios = []
    try:
        base = float(by["peer: `python -c pass`"][1])
        for name in ("process (business)", "container (third_party)"):
            if name in by and by[name][1].replace(".", "", 1).isdigit():
                ratios.append(f"{name} launch = {float(by[name][1]) / base:.2f} × `python -c pass`")
        bare_row = by.get("peer: bare `podman run … true`")
        if bare_row and "container (third_party)" in by:
            ratios.append(f"container launch = {float(by['container (third_party)'][1]) / float(bare_row[1]):.2f}"
                          f" × bare podman run")
    except (KeyError, ValueError):
        pass
    machine = (f"{platform.node()}: {os.cpu_count()} cores, {platform.platform()}, Python "
               f"{platform.python_version()}, podman {podman_version()}")
    report = "\n".join([
        f"### Isolation overhead ({time.strftime('%Y-%m-%d')})", "",
        f"Machine: {machine}  ",
        f"Command: `python bench/isolation_overhead.py --launches {args.launches} --calls {args.calls}"
        + "".join(f" --set {s}" for s in args.set) + "`", "",
        *lines, "", *(f"- {r}" for r in ratios), "",
    ])
    print(report)
    if args.write:
        with open(args.write, "a", encoding="utf-8") as handle:
            handle.write("\n" + report)
    return 0


def podman_version() -> str:
    if not shutil.which("podman"):
        return "not installed"
    out = subprocess.run(["podman", "--version"], capture_output=True, text=True).stdout.split()
    return out[-1] if out else "?"


if __name__ == "__main__":
    sys.exit(main())

"""Scale benchmark: one controller driving N targets through a whole run; how its cost grows with N.

Run on demand:  python bench/scale.py [--targets 100 300 1000] [--steps 2] [--commands 0] [--forks 50]
                [--ssh] [--count-commits] [--json] [--profile FILE] [--runs N] [--per-step]

Each size is a real `drhost upgrade` (the CLI, in a child process) of N targets with the local transport
(every target its own root directory on this machine) and a trivial plugin set: one benchmark plugin of class
``core`` (a thread in drhost, the cheapest isolation) that registers ``--steps`` steps in each of the five
stages, each doing nothing, or running ``--commands`` trivial commands (``true``) on the target in all. So what
is measured is drhost itself: planning, the orchestrator, the watchdog, events, the journal and the run state.
With ``--ssh`` every target is instead a real OpenSSH ``sshd`` of its own on loopback (drhost/demo/sshd.py: own
port, own host key checked strictly, login as root), started before the run and stopped after it: the same
run over SSH, with its connections, heartbeats and remote helpers.

Reported per size: wall time, the controller's CPU (user + system of the drhost process itself, from its own
``getrusage(RUSAGE_SELF)`` at exit: commands it starts are not in it), the controller's peak RSS, and CPU and
wall per target. ``exponent`` is the slope of log(controller CPU) against log(targets), a least-squares fit over
the sizes: 1.0 is a flat cost per target, 2.0 a cost per target that grows with the fleet.

``--per-step`` adds the controller CPU of one more step (part 3 of the scale work: a remote step on a warm
connection): the run again with 2 steps a stage, and the difference divided by the steps it lacks, so that
start-up, connections and the fixed cost of a target cancel out. ``--runs N`` takes the median of N runs.

``--count-commits`` also counts the run state's commits (from the failpoint log, which costs a little CPU of its
own): per target they must not grow with the fleet (tests/test_fleet_scale.py).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CHILD = "--child"
RUSAGE_ENV = "DRHOST_BENCH_RUSAGE"
PLUGIN = "bench-scale"

PLUGIN_SOURCE = '''
"""Benchmark plugin made by bench/scale.py: STEPS trivial steps per stage, COMMANDS commands per target."""

from drhost_hookspecs import Category, PluginClass, PluginInfo, Stage, Step, hookimpl

STEPS = {steps}
COMMANDS = {commands}
TOTAL = STEPS * 5


@hookimpl
def drhost_plugin_info():
    return PluginInfo(name={name!r}, department="bench", plugin_class=PluginClass.CORE)


def step_for(index):
    # The first COMMANDS steps of the run each run one trivial command; the others do nothing.
    def step(ctx):
        if index < COMMANDS:
            ctx.run(["true"])
    return step


@hookimpl
def drhost_stage_steps(stage, register):
    first = Stage.ordered().index(stage) * STEPS
    for offset in range(STEPS):
        register(Step(f"noop_{{first + offset + 1:03d}}", step_for(first + offset), retryable=True, timeout_s=600,
                      category=Category.PLUGIN, order=10 + offset))
'''


def child(argv: list[str]) -> int:
    """Run the drhost CLI in this process; at exit, write this process's own rusage where the parent said."""
    from drhost.cli import main

    try:
        code = main(argv)
    finally:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        Path(os.environ[RUSAGE_ENV]).write_text(json.dumps(
            {"cpu_s": usage.ru_utime + usage.ru_stime, "max_rss_kib": usage.ru_maxrss}))
    return int(code or 0)


def write_plugin(site: Path, steps: int, commands: int) -> None:
    module = PLUGIN.replace("-", "_")
    site.mkdir(parents=True)
    (site / f"{module}.py").write_text(PLUGIN_SOURCE.format(steps=steps, commands=commands, name=PLUGIN))
    dist = site / f"{module}-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {module}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[drhost.plugins]\n{PLUGIN} = {module}\n")


def one_size(base: Path, count: int, args: argparse.Namespace, package: Path, site: Path) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"{count}-", dir=base))
    lines = []
    hosts = []
    if args.ssh:
        from drhost.demo.sshd import start_hosts

        hosts = start_hosts(work / "hosts", count, prefix="t")
        lines = [f"[target:{host.name}]\ntransport = ssh\nhost = {host.host}\nport = {host.port}\nuser = root\n"
                 f"key_file = {host.client_key}\nknown_hosts = {host.known_hosts}\nhost_key_policy = strict\n"
                 f"root = {host.root}\n" for host in hosts]
    for index in range(0 if args.ssh else count):
        root = work / "targets" / f"t{index:05d}"
        root.mkdir(parents=True)
        lines.append(f"[target:t{index:05d}]\ntransport = local\nroot = {root}\n")
    inventory = work / "inventory.ini"
    inventory.write_text("\n".join(lines))
    try:
        return _run_size(work, inventory, count, args, package, site)
    finally:
        for host in hosts:
            host.stop()


def _run_size(work: Path, inventory: Path, count: int, args: argparse.Namespace, package: Path,
              site: Path) -> dict[str, Any]:
    rusage = work / "rusage.json"
    failpoints = work / "failpoints.log"
    env = {**os.environ, "DRHOST_LOAD_PLUGINS": PLUGIN, "DRHOST_STATE_DIR": str(work / "state"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(site), str(REPO), os.environ.get("PYTHONPATH")])),
           RUSAGE_ENV: str(rusage), **({"DRHOST_FAILPOINT_LOG": str(failpoints)} if args.count_commits else {})}
    argv = [sys.executable, str(Path(__file__).resolve()), CHILD, "upgrade", "-i", str(inventory), "--package",
            str(package), "--set", f"run.forks={min(args.forks, count)}", "--plain", "--json"]
    if args.profile:
        # py-spy samples from outside the process: the child's own rusage stays its own.
        argv = ["py-spy", "record", "--format", "raw", "--rate", "250", "--subprocesses",
                "--output", str(args.profile.with_suffix(f".{count}.txt")), "--", *argv]
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, cwd=work, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    try:
        # py-spy, when profiling, says what it does on the same stdout around drhost's summary.
        out = done.stdout
        summary = json.loads(out[out.find("{"):out.rfind("}") + 1] if args.profile else out)
    except ValueError:
        raise SystemExit(f"{count} targets: drhost exited {done.returncode}:\n{done.stdout[-2000:]}"
                         f"{done.stderr[-2000:]}") from None
    statuses = {target.get("status") for target in summary["targets"].values()}
    if summary["status"] != "succeeded" or statuses != {"succeeded"} or len(summary["targets"]) != count:
        raise SystemExit(f"{count} targets: run {summary['status']}: {sorted(map(str, statuses))}")
    used = json.loads(rusage.read_text())
    counted: dict[str, Any] = {}
    if args.count_commits:
        reached = failpoints.read_text().splitlines()
        counted = {"state_commits": reached.count("state.committed"),
                   "state_commits_per_target": round(reached.count("state.committed") / count, 2)}
    return {"targets": count, "wall_s": round(wall, 2), "controller_cpu_s": round(used["cpu_s"], 2),
            "peak_rss_mib": round(used["max_rss_kib"] / 1024, 1),
            "cpu_per_target_ms": round(used["cpu_s"] / count * 1000, 1),
            "wall_per_target_ms": round(wall / count * 1000, 1),
            "steps_per_target": args.steps * 5, "commands_per_target": min(args.commands, args.steps * 5),
            "transport": "ssh" if args.ssh else "local", **counted}


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median controller CPU (the VM's noise is one-sided: a slow run is slowed by something else)."""
    ordered = sorted(runs, key=lambda r: r["controller_cpu_s"])
    return {**ordered[len(ordered) // 2], **({"controller_cpu_s_runs": [r["controller_cpu_s"] for r in runs]}
                                             if len(runs) > 1 else {})}


#: The baseline of ``--per-step``: this many steps a stage (10 a target), each with a command when the measured
#: run has one in every step.
BASE_STEPS = 2


def per_step(base: Path, count: int, args: argparse.Namespace, package: Path, row: dict[str, Any]
             ) -> dict[str, Any]:
    """The controller CPU of one more step: the measured run against the same run with BASE_STEPS steps a
    stage, so that start-up, connections, locks and the fixed steps of a target cancel out."""
    commands = BASE_STEPS * 5 if args.commands >= args.steps * 5 else 0
    site = base / f"site-{BASE_STEPS}-{commands}"
    if not site.exists():
        write_plugin(site, BASE_STEPS, commands)
    baseline = argparse.Namespace(**{**vars(args), "steps": BASE_STEPS, "commands": commands, "profile": None})
    small = median_run([one_size(base, count, baseline, package, site) for _ in range(args.runs)])
    more = count * (args.steps - BASE_STEPS) * 5
    return {"baseline_controller_cpu_s": small["controller_cpu_s"],
            "step_cpu_ms": round((row["controller_cpu_s"] - small["controller_cpu_s"]) / more * 1000, 3)}


def exponent(rows: list[dict[str, Any]]) -> float | None:
    """The least-squares slope of log(controller CPU) against log(targets)."""
    points = [(math.log(r["targets"]), math.log(r["controller_cpu_s"])) for r in rows if r["controller_cpu_s"] > 0]
    if len(points) < 2:
        return None
    mean_x = sum(x for x, _ in points) / len(points)
    mean_y = sum(y for _, y in points) / len(points)
    spread = sum((x - mean_x) ** 2 for x, _ in points)
    return round(sum((x - mean_x) * (y - mean_y) for x, y in points) / spread, 3) if spread else None


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == CHILD:
        return child(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--steps", type=int, default=2, help="steps per stage (default 2: 10 a target)")
    parser.add_argument("--commands", type=int, default=0, help="steps of a target that run `true` (default 0)")
    parser.add_argument("--forks", type=int, default=50)
    parser.add_argument("--ssh", action="store_true", help="each target a real loopback sshd of its own")
    parser.add_argument("--count-commits", action="store_true", help="count state commits (failpoint log)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--runs", type=int, default=1, help="runs of each size; the one of median CPU is reported")
    parser.add_argument("--per-step", action="store_true",
                        help=f"also the controller CPU of one more step ({BASE_STEPS} steps a stage as baseline; "
                        "give --commands = 5 x --steps for a remote command in every step)")
    parser.add_argument("--profile", type=Path, help="record each size's run with py-spy (on PATH) into "
                        "PROFILE.TARGETS.txt (collapsed stacks)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="drhost-bench-scale-") as tmp:
        base = Path(tmp)
        site = base / "site"
        write_plugin(site, args.steps, args.commands)
        built = subprocess.run([sys.executable, "-m", "drhost", "package", "build", "2.0.0", "--out",
                                str(base / "package")], check=True, capture_output=True, text=True,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
        package = Path(built.stdout.strip().splitlines()[-1])
        rows = []
        for count in sorted(args.targets):
            runs = [one_size(base, count, args, package, site) for _ in range(args.runs)]
            row = median_run(runs)
            if args.per_step:
                row.update(per_step(base, count, args, package, row))
            rows.append(row)
    result = {"sizes": rows, "exponent": exponent(rows), "forks": args.forks, "cpus": os.cpu_count(),
              "python": sys.version.split()[0], "runs": args.runs}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'targets':>8} {'wall s':>8} {'ctl CPU s':>10} {'CPU/target ms':>14} {'wall/target ms':>15} "
          f"{'peak RSS MiB':>13}")
    for row in rows:
        print(f"{row['targets']:>8} {row['wall_s']:>8.2f} {row['controller_cpu_s']:>10.2f} "
              f"{row['cpu_per_target_ms']:>14.1f} {row['wall_per_target_ms']:>15.1f} {row['peak_rss_mib']:>13.1f}")
    print(f"exponent of controller CPU against targets: {result['exponent']}")
    for row in rows:
        if "step_cpu_ms" in row:
            print(f"{row['targets']} targets: one more step costs {row['step_cpu_ms']} ms of controller CPU "
                  f"({row['controller_cpu_s']} s at {args.steps * 5} steps a target, "
                  f"{row['baseline_controller_cpu_s']} s at {BASE_STEPS * 5})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

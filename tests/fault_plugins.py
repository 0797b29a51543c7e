"""Sources of deliberately hostile plugins, one per fault kind, for the isolation fault matrix."""

from __future__ import annotations

#: kind -> body of the plugin's single upgrade step (``ctx`` is the Context)
STEP_BODIES = {
    "exit": "import os\nos._exit(3)",
    "segfault": "import ctypes\nctypes.string_at(0)",
    # Steps run in a worker thread, where signal.signal() is refused: ask libc directly (SIG_IGN is 1).
    "hang_ignoring_term": (
        "import ctypes, signal, time\nctypes.CDLL(None).signal(int(signal.SIGTERM), 1)\nwhile True:\n"
        "    time.sleep(0.05)"),
    "memory_bomb": "hoard = []\nwhile True:\n    hoard.append(b'x' * (16 * 1024 * 1024))",
    # Bounded, so that even with no limit at all the machine survives the test.
    "fork_bomb": (
        "import os, time\nstarted = 0\nfor _ in range(300):\n    try:\n        pid = os.fork()\n"
        "    except OSError as exc:\n        raise RuntimeError(f'fork refused after {started} children: {exc}')\n"
        "    if pid == 0:\n        time.sleep(120)\n        os._exit(0)\n"
        "    started += 1\ntime.sleep(60)\nraise RuntimeError(f'fork bomb was not stopped: {started} children')"),
    "cpu_spin": "while True:\n    pass",
    "stdout_flood": "import sys\nfor _ in range(100000):\n    print('x' * 199)\nctx.state['flooded'] = True",
    "protocol_garbage": (
        "import fcntl, os\nfor fd in range(3, 32):\n    try:\n        flags = fcntl.fcntl(fd, fcntl.F_GETFL)\n"
        "    except OSError:\n        continue\n    if flags & os.O_ACCMODE == os.O_WRONLY:\n"
        "        os.write(fd, b'this is not json\\n')\nimport time\ntime.sleep(30)"),
    "oversize_message": "ctx.state['blob'] = 'x' * (8 * 1024 * 1024)",
    "write_outside": "open('/opt/drhost-fault-matrix-evil', 'w').write('owned')",
    "network": "import socket\nsocket.create_connection(('127.0.0.1', int(ctx.config['port'])), timeout=3).close()",
    # Leave the cgroups that hold the limits (and the final kill): the root cgroup of each controller.
    "escape_cgroup": (
        "import glob, os\nprocs_files = sorted(glob.glob('/sys/fs/cgroup/*/cgroup.procs'))\n"
        "for procs in procs_files + ['/sys/fs/cgroup/cgroup.procs']:\n"
        "    if os.path.exists(procs):\n        open(procs, 'w').write(str(os.getpid()))\n"
        "raise RuntimeError('left its cgroups')"),
    "become_root": "import os\nos.setuid(0)\nraise RuntimeError('became root')",
    # Through the Context: the host performs the write, so the host refuses it (not the sandbox).
    "context_outside": "ctx.write_text('/etc/drhost-hostile-context', 'owned')",
    # A daemon that outlives the step: double fork, own session; __PLUGIN__ in its command line finds it later.
    "daemon": (
        "import subprocess, sys\nsleeper = 'import os, time; os.fork() or time.sleep(300); time.sleep(300)'\n"
        "subprocess.Popen([sys.executable, '-c', sleeper, '__PLUGIN__'], start_new_session=True,\n"
        "                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "raise RuntimeError('started a daemon')"),
}

#: kind -> words the failure message must contain (the limit or cause that stopped the plugin)
NAMED_BY = {
    "exit": ("exit code 3",),
    "segfault": ("SIGSEGV",),
    "hang_ignoring_term": ("no result after",),
    "memory_bomb": ("memory",),
    "fork_bomb": ("process", "fork"),
    "cpu_spin": ("no result after",),
    "protocol_garbage": ("protocol",),
    "oversize_message": ("exceeds the limit",),
    "write_outside": ("Read-only file system",),
    "escape_cgroup": ("Read-only file system", "Permission denied"),
    "become_root": ("Operation not permitted",),
    "context_outside": ("outside the product root",),
    "daemon": ("started a daemon",),
    "network": ("Network is unreachable", "Connection refused", "No route", "unreachable"),
}


def fault_plugin(name: str, plugin_class: str, kind: str) -> str:
    """A plugin with one upgrade step doing ``kind``; it also accepts a ``port`` config key."""
    body = STEP_BODIES[kind].replace("__PLUGIN__", name).replace("\n", "\n    ")
    return f"""
@hookimpl
def drhost_plugin_info():
    return PluginInfo(name={name!r}, department="chaos", plugin_class=PluginClass({plugin_class!r}))

@hookimpl
def drhost_config_schema():
    return {{"type": "object", "properties": {{"port": {{"type": "integer"}}}}}}

def hostile(ctx):
    {body}

@hookimpl
def drhost_stage_steps(stage, register):
    if stage is Stage.UPGRADE:
        register(Step("hostile", hostile, retryable=False, timeout_s=60, category=Category.PLUGIN))
"""

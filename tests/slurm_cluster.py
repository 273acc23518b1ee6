"""A throw-away single-node SLURM cluster (munged, slurmctld, slurmd) under one folder, for tests.

Debian's packages, run as root, no accounting: `sacct` fails, so submitit sees every job as UNKNOWN and
waits on result files; every wait of a test that uses this cluster must therefore carry a timeout.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
START_TIMEOUT_S = 30.0
DRAIN_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0


class ClusterError(RuntimeError):
    """The cluster did not come up, or did not drain, in time."""


def missing_programs() -> list[str]:
    """The daemons and clients this cluster needs that are not on the PATH."""
    return [p for p in (*DAEMONS, "munge", "sinfo", "squeue", "scancel", "sbatch") if shutil.which(p) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_line() -> str:
    """This machine's `slurmd -C` hardware line, renamed to `localhost` at 127.0.0.1."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True, timeout=30).stdout
    fields = [f for f in out.splitlines()[0].split() if not f.startswith("NodeName=")]
    return " ".join(["NodeName=localhost", "NodeAddr=127.0.0.1", *fields, "State=UNKNOWN"])


def _write_config(root: Path) -> Path:
    for sub in ("munge", "state", "spool", "log"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "munge").chmod(0o755)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    settings = {
        "ClusterName": "ci",
        "SlurmctldHost": "localhost(127.0.0.1)",
        "SlurmctldPort": _free_port(),
        "SlurmdPort": _free_port(),
        "SlurmUser": "root",
        "SlurmdUser": "root",
        "AuthType": "auth/munge",
        "CredType": "cred/munge",
        "AuthInfo": f"socket={root / 'munge' / 'munge.socket.2'}",
        "StateSaveLocation": root / "state",
        "SlurmdSpoolDir": root / "spool",
        "SlurmctldPidFile": root / "slurmctld.pid",
        "SlurmdPidFile": root / "slurmd.pid",
        "SlurmctldLogFile": root / "log" / "slurmctld.log",
        "SlurmdLogFile": root / "log" / "slurmd.log",
        "ProctrackType": "proctrack/linuxproc",
        "TaskPlugin": "task/none",
        "JobAcctGatherType": "jobacct_gather/none",
        "AccountingStorageType": "accounting_storage/none",
        "MpiDefault": "none",
        "SwitchType": "switch/none",
        "SchedulerType": "sched/backfill",
        "SchedulerParameters": "batch_sched_delay=0",
        "SelectType": "select/cons_tres",
        "SelectTypeParameters": "CR_Core",
        "ReturnToService": 2,
    }
    lines = [f"{k}={v}" for k, v in settings.items()]
    lines += [_node_line(), "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP"]
    conf = root / "slurm.conf"
    conf.write_text("\n".join(lines) + "\n")
    return conf


def _wait_until(ready: Callable[[], bool], what: str, procs: dict[str, subprocess.Popen], logs: Path) -> None:
    """Poll `ready` for up to START_TIMEOUT_S; fail early, with the daemons' logs, if a daemon has exited."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        dead = [name for name, proc in procs.items() if proc.poll() is not None]
        if dead:
            raise ClusterError(f"{', '.join(dead)} exited while waiting for {what}{_log_tails(logs)}")
        if ready():
            return
        time.sleep(0.2)
    raise ClusterError(f"timed out after {START_TIMEOUT_S:.0f} s waiting for {what}{_log_tails(logs)}")


def _log_tails(logs: Path) -> str:
    return "".join(f"\n--- {p.name}\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                   for p in sorted(logs.iterdir()) if p.is_file())


def _succeeds(cmd: list[str], env: dict[str, str]) -> str | None:
    """stdout of `cmd`, or None if it failed or hung."""
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        return None
    return done.stdout if done.returncode == 0 else None


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the daemon's process group (it leads its own), SIGKILL if it has not exited in time; reaped."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_TIMEOUT_S)


def _drain(env: dict[str, str]) -> None:
    """Cancel every job and wait until the queue is empty, so that no slurmstepd outlives slurmd."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        queued = _succeeds(["squeue", "-h", "-o", "%A"], env)
        if queued == "":
            return
        if queued:
            subprocess.run(["scancel", *queued.split()], env=env, capture_output=True, timeout=10)
        time.sleep(0.5)
    raise ClusterError(f"jobs still queued {DRAIN_TIMEOUT_S:.0f} s after scancel")


@contextmanager
def slurm_cluster() -> Iterator[dict[str, str]]:
    """Start a one-node cluster (partition `debug`) in a new temporary folder; yield its clients' environment.

    The environment is this process's, without inherited SLURM_* variables, with SLURM_CONF set. On exit,
    whatever happened inside: jobs are cancelled and drained, each daemon is stopped by its PID, and the
    folder is removed. The folder is world-searchable under /tmp, as munged requires of its socket's path.
    """
    root = Path(tempfile.mkdtemp(prefix="vpeft-slurm-", dir="/tmp"))
    root.chmod(0o755)
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        yield from _run(root, stack)


def _run(root: Path, stack: ExitStack) -> Iterator[dict[str, str]]:
    """Write the configuration, start the daemons one by one (each stop registered on `stack`), yield."""
    conf = _write_config(root)
    munge_dir, logs = root / "munge", root / "log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")} | {"SLURM_CONF": str(conf)}
    commands = {
        "munged": ["munged", "-F", f"--key-file={munge_dir / 'munge.key'}",
                   f"--socket={munge_dir / 'munge.socket.2'}", f"--pid-file={munge_dir / 'munged.pid'}",
                   f"--log-file={logs / 'munged.log'}", f"--seed-file={munge_dir / 'munged.seed'}"],
        "slurmctld": ["slurmctld", "-D", "-f", str(conf)],
        "slurmd": ["slurmd", "-D", "-f", str(conf), "-N", "localhost"],
    }
    ready = {
        "munged": ("munge", lambda: _succeeds(["munge", "-S", str(munge_dir / "munge.socket.2"), "-n"], env)),
        "slurmctld": ("slurmctld", lambda: _succeeds(["sinfo", "-h"], env)),
        "slurmd": ("the node to be idle", lambda: (_succeeds(["sinfo", "-h", "-N", "-o", "%T"], env) or "")
                   .strip() == "idle"),
    }
    procs: dict[str, subprocess.Popen] = {}
    for name, cmd in commands.items():
        out = (logs / f"{name}.out").open("wb")
        stack.callback(out.close)
        procs[name] = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                       stderr=subprocess.STDOUT, start_new_session=True)
        stack.callback(_stop, procs[name])  # stopped in reverse order: slurmd, slurmctld, munged
        what, check = ready[name]
        _wait_until(lambda check=check: bool(check()), what, procs, logs)
    stack.callback(_drain, env)  # before any daemon stops
    yield env

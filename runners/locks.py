"""One writer per run directory: `<run_dir>/.lock` is created exclusively and removed on exit.

A lock whose holder is gone is stale and taken over: on the same host when its process no longer exists,
on another host (a SLURM node) when it has not been refreshed — every checkpoint refreshes it — for
`stale_after` seconds.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from data.cache import process_alive


class RunLock:
    def __init__(self, run_dir: str | Path, stale_after: float = 3600.0):
        self.path = Path(run_dir) / ".lock"
        self.stale_after = stale_after
        self.me = {"host": socket.gethostname(), "pid": os.getpid()}
        self.held = False

    def holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _stale(self) -> bool:
        holder = self.holder()
        if holder is None:
            return True
        if holder.get("host") == self.me["host"]:
            return not process_alive(int(holder["pid"]))
        try:
            return time.time() - self.path.stat().st_mtime > self.stale_after
        except FileNotFoundError:
            return True

    def acquire(self) -> bool:
        """Claim the run directory; False if a live process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._stale():
                    return False
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({**self.me, "since": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
            self.held = True
            return True
        return False

    def clear_if_stale(self) -> bool:
        """Remove a lock left by a process that died (e.g. killed after its metrics.json was written); whether
        there was one."""
        if self.path.exists() and self._stale():
            self.path.unlink(missing_ok=True)
            return True
        return False

    def refresh(self) -> None:
        if self.held:
            os.utime(self.path)

    def release(self) -> None:
        holder = self.holder()
        if self.held and holder and all(holder.get(k) == v for k, v in self.me.items()):
            self.path.unlink(missing_ok=True)
        self.held = False

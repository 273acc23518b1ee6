"""User errors: one line that says what to do, exit code 2, no traceback. Interrupts: one line, exit 130 (Ctrl-C)
or 143 (SIGTERM), the run resumable from its last checkpoint."""

from __future__ import annotations

import errno
import os
import re
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from hydra.errors import (
    ConfigCompositionException,
    InstantiationException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf.errors import InterpolationToMissingValueError, MissingMandatoryValue, OmegaConfBaseException

from runners.overrides import ConfigError, all_keys, group_options, suggest

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A run cannot start as configured; the message is the one line shown to the user."""


def first_line(exc: BaseException, limit: int | None = 100) -> str:
    """The first line of `exc`'s message (its type's name when it has none), cut at `limit` characters."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if limit is None or len(text) <= limit else f"{text[:limit]}…"


def damaged(path: object, exc: BaseException) -> UserError:
    """A run-folder file this runner wrote that cannot be read back: named, never trusted or deleted."""
    return UserError(f"{path} is damaged ({first_line(exc, 80)}); look at it, then move it away or rerun with "
                     f"force=true to start the run over")


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's cancel, `kill`), raised like Ctrl-C's KeyboardInterrupt so that every `finally` runs."""

    exit_code = 128 + signal.SIGTERM


def _terminate(signum: int, frame: object) -> None:
    raise Terminated()


# Filesystem failures the user fixes (a full disk, a read-only or someone else's folder), with what to do.
_OS_HINTS = {
    errno.ENOSPC: "free space there, or point paths.runs / data.cache_dir to a disk with room",
    errno.EDQUOT: "free space within your quota, or point paths.runs / data.cache_dir elsewhere",
    errno.EROFS: "point paths.runs / data.cache_dir to a writable folder",
    errno.EACCES: "fix its permissions, or point paths.runs / data.cache_dir / paths.data_dir elsewhere",
    errno.EPERM: "fix its permissions, or point paths.runs / data.cache_dir / paths.data_dir elsewhere",
}


def _unknown_key(key: str) -> str:
    """`epoch=5`: Hydra's hint (+epoch=5) would add a key nothing reads; suggest the key that exists instead."""
    from runners.config import compose

    try:
        keys = all_keys(compose())
    except Exception:  # the suggestion is a courtesy; the message stands without it
        keys = []
    return f"unknown key '{key}'{suggest(key, keys)}; 'python train.py --cfg job' lists the keys"


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno in _OS_HINTS:
        return f"{exc.filename}: {exc.strerror}; {_OS_HINTS[exc.errno]}"
    if isinstance(exc, MissingConfigException) and exc.options is not None:
        group, choice = (exc.missing_cfg_file or "").split("/", 1)
        return f"unknown {group} '{choice}'; choose one of: {', '.join(group_options(group))}"
    if isinstance(exc, ConfigCompositionException) and (found := re.match(r"Could not override '([^']+)'", str(exc))):
        return _unknown_key(found.group(1))
    if isinstance(exc, InterpolationToMissingValueError):
        found = re.search(r"Missing mandatory value: (\S+)", str(exc))
        source = found.group(1) if found else "a value"
        return (f"{exc.full_key} comes from {source}, which this config leaves open (no published value): "
                f"pass {source}=...")
    if isinstance(exc, MissingMandatoryValue):
        return f"{exc.full_key} has no default and must be given: {exc.full_key}=..."
    text = str(exc).strip()
    while isinstance(exc.__cause__, ConfigCompositionException | OmegaConfBaseException):
        exc = exc.__cause__
        text = f"{text}: {str(exc).strip()}"
    return " ".join(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("    "))


CONFIG_ERRORS = (MissingConfigException, ConfigCompositionException, OverrideParseException, MissingMandatoryValue,
                 InterpolationToMissingValueError)


def _own_errors() -> tuple[type[Exception], ...]:
    from data.task import DataError  # here, so that importing this module (train.py --help) imports no torch
    from methods.base import MethodError

    return UserError, ConfigError, DataError, MethodError


def user_cause(exc: BaseException) -> BaseException | None:
    """The user error behind `exc`: our own raised inside a resolver or a Hydra-built `_target_` (wrapped by
    OmegaConf or Hydra), else `exc` itself if it is a configuration error; None for anything else."""
    chain, current = [], exc
    while current is not None and all(current is not c for c in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    own = _own_errors()
    for kinds in (own, (*own, *CONFIG_ERRORS)):
        found = next((c for c in chain if isinstance(c, kinds)), None)
        if found is not None:
            return found
    return next((c for c in chain if isinstance(c, OSError) and c.errno in _OS_HINTS and c.filename), None)


def describe(exc: BaseException) -> str | None:
    """The one line for a user error behind `exc`; None for anything else (a bug: its traceback is wanted)."""
    cause = user_cause(exc)
    return None if cause is None else _one_line(cause)


@contextmanager
def user_errors() -> Iterator[None]:
    """A user error inside ends the process with one line on stderr and exit code 2."""
    try:
        yield
    except (Exception, InstantiationException) as exc:
        line = describe(exc)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def guard(main: Callable[[], object]) -> None:
    """Run an entry point (Hydra's included) under `user_errors`; Ctrl-C and SIGTERM end it with one line (where
    the run stopped, set by the trainer as the interrupt's `where`) and exit code 130 or 143."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # let composition errors reach us instead of Hydra's report
    signal.signal(signal.SIGTERM, _terminate)
    try:
        with user_errors():
            main()
    except KeyboardInterrupt as exc:
        where = getattr(exc, "where", None)
        print(f"interrupted{f' at {where}' if where else ''}; rerun the same command to resume", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 128 + signal.SIGINT))

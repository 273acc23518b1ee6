"""User errors: one line that says what to do, exit code 2, no traceback."""

from __future__ import annotations

import os
import re
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

from data.task import DataError
from methods.base import MethodError
from runners.config import CONF_DIR

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A run cannot start as configured; the message is the one line shown to the user."""


def _options(group: str) -> list[str]:
    """Every option of a config group, nested ones as `vtab/cifar`; `_`-prefixed bases left out."""
    folder = CONF_DIR / group
    return sorted(str(p.relative_to(folder).with_suffix("")) for p in folder.rglob("*.yaml")
                  if not p.name.startswith("_"))


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, MissingConfigException) and exc.options is not None:
        group, choice = (exc.missing_cfg_file or "").split("/", 1)
        return f"unknown {group} '{choice}'; choose one of: {', '.join(_options(group))}"
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


USER_ERRORS = (UserError, DataError, MethodError, MissingConfigException, ConfigCompositionException,
               OverrideParseException, MissingMandatoryValue, InterpolationToMissingValueError)


OWN_ERRORS = (UserError, DataError, MethodError)


def user_cause(exc: BaseException) -> BaseException | None:
    """The user error behind `exc`: our own raised inside a resolver or a Hydra-built `_target_` (wrapped by
    OmegaConf or Hydra), else `exc` itself if it is a configuration error; None for anything else."""
    chain, current = [], exc
    while current is not None and all(current is not c for c in chain):
        chain.append(current)
        current = current.__cause__ or current.__context__
    for kinds in (OWN_ERRORS, USER_ERRORS):
        found = next((c for c in chain if isinstance(c, kinds)), None)
        if found is not None:
            return found
    return None


@contextmanager
def user_errors() -> Iterator[None]:
    """A user error inside ends the process with one line on stderr and exit code 2."""
    try:
        yield
    except (Exception, InstantiationException) as exc:
        cause = user_cause(exc)
        if cause is None:
            raise
        print(f"error: {_one_line(cause)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def guard(main: Callable[[], object]) -> None:
    """Run an entry point (Hydra's included) under `user_errors`."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # let composition errors reach us instead of Hydra's report
    with user_errors():
        main()

"""User errors: one line that says what to do, exit code 2, no traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from data.task import DataError
from methods.base import MethodError

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A run cannot start as configured; the message is the one line shown to the user."""


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, MissingConfigException) and exc.options is not None:
        group, _, choice = (exc.missing_cfg_file or "").rpartition("/")
        options = ", ".join(sorted(exc.options))
        return f"unknown {group or 'config'} '{choice}'; choose one of: {options}"
    text = str(exc).strip()
    while isinstance(exc.__cause__, ConfigCompositionException | OmegaConfBaseException):
        exc = exc.__cause__
        text = f"{text}: {str(exc).strip()}"
    return " ".join(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("    "))


USER_ERRORS = (UserError, DataError, MethodError, MissingConfigException, ConfigCompositionException,
               OverrideParseException)


@contextmanager
def user_errors() -> Iterator[None]:
    """A user error inside ends the process with one line on stderr and exit code 2."""
    try:
        yield
    except USER_ERRORS as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def guard(main: Callable[[], object]) -> None:
    """Run an entry point (Hydra's included) under `user_errors`."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # let composition errors reach us instead of Hydra's report
    with user_errors():
        main()

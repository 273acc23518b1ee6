"""User errors: one line that says what to do, exit code 2, no traceback."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf.errors import OmegaConfBaseException

from data.task import DataError
from methods.base import MethodError

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A run cannot start as configured; the message is the one line shown to the user."""


_GROUP_WORDS = {"method": "method", "dataset": "dataset", "backbone": "backbone"}


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, MissingConfigException) and exc.options is not None:
        group, _, choice = (exc.missing_cfg_file or "").rpartition("/")
        options = ", ".join(sorted(exc.options))
        return f"unknown {group or 'config'} '{choice}'; choose one of: {options}"
    text = str(exc).strip()
    while isinstance(exc.__cause__, ConfigCompositionException | OmegaConfBaseException) and exc.__cause__:
        exc = exc.__cause__
        text = f"{text}: {str(exc).strip()}"
    return " ".join(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("    "))


USER_ERRORS = (UserError, DataError, MethodError, MissingConfigException, ConfigCompositionException,
               OverrideParseException)


def guard(main: Callable[[], object]) -> None:
    """Run a Hydra entry point; a user error ends it with one line on stderr and exit code 2."""
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")  # let errors reach us instead of Hydra's report
    try:
        main()
    except USER_ERRORS as exc:
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)

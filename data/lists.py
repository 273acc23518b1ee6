"""List files: one `relative/path label` per line (NOAH's VTAB-1k and few-shot lists)."""

from __future__ import annotations

import stat
from pathlib import Path

from data.task import DataError


def _is_file(path: Path, what: str) -> bool:
    """Whether `path` (described as `what`) is a file. One that cannot be looked at (a folder above it unreadable,
    an I/O error) is a DataError naming it, not reported as missing."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as e:
        raise DataError(f"cannot read {what} ({e.strerror}); fix the permissions of it and of the folders that "
                        f"hold it") from None


def read_list(list_file: Path, image_root: Path) -> list[tuple[Path, int]]:
    """(image path, label) per line; the path is split from the label at the last whitespace."""
    if not _is_file(list_file, f"list file {list_file}"):
        raise DataError(f"list file {list_file} does not exist")
    try:
        text = list_file.read_text()
    except OSError as e:
        raise DataError(f"cannot read list file {list_file} ({e.strerror}); fix its permissions (or the disk it "
                        f"is on)") from None
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"{list_file}:{number}: expected '<relative/path> <integer label>', got {line!r}")
        path = image_root / parts[0]
        if not _is_file(path, f"image {path} on line {number} of {list_file}"):
            raise DataError(f"{list_file}:{number}: image {path} does not exist")
        entries.append((path, int(parts[1])))
    if not entries:
        raise DataError(f"list file {list_file} is empty")
    return entries

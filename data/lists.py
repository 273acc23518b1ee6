"""List files: one `relative/path label` per line (NOAH's VTAB-1k and few-shot lists)."""

from __future__ import annotations

from pathlib import Path

from data.task import DataError


def read_list(list_file: Path, image_root: Path) -> list[tuple[Path, int]]:
    """(image path, label) per line; the path is split from the label at the last whitespace."""
    if not list_file.is_file():
        raise DataError(f"list file {list_file} does not exist")
    entries = []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise DataError(f"{list_file}:{number}: expected '<relative/path> <integer label>', got {line!r}")
        path = image_root / parts[0]
        if not path.is_file():
            raise DataError(f"{list_file}:{number}: image {path} does not exist")
        entries.append((path, int(parts[1])))
    if not entries:
        raise DataError(f"list file {list_file} is empty")
    return entries

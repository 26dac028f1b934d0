"""Small file primitives every layer shares."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _read_umask() -> int:
    # Reading the umask means setting it; done once, at import (normally single-threaded),
    # not per write, where another thread could create a file while it is 0.
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def write_json_atomic(
    path: Path, data: Any, *, indent: int | None = None, mode: int | None = None
) -> None:
    """Replace ``path`` with ``data`` as JSON so that readers see the old or the new file,
    never a partial one (written to a unique temporary file in the same directory, then
    renamed over ``path``). Creates the parent directory.

    The file gets the permissions ``mode`` (e.g. ``0o600`` for a private one), by default
    what a plain ``open()`` gives (0666 minus the umask), so a reader running as another user
    (Airflow, the API) can still read it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK if mode is None else mode)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=indent, default=str)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or ``None`` if it is missing or not valid JSON."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def tail(path: Path, lines: int = 5, width: int | None = None, max_bytes: int = 16384) -> str:
    """The last ``lines`` non-empty lines of ``path`` (read from its last ``max_bytes``:
    service logs grow large), each cut at ``width`` characters, joined with `` | ``; empty
    if the file cannot be read."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - max_bytes))
            text = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    kept = [line.strip()[:width] for line in text if line.strip()]
    return " | ".join(kept[-lines:])

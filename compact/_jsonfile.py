"""Reading the small JSON files compact writes (status, summary, profile, plan), as a crafted copy may be.

Such a file can be anything: not UTF-8, not JSON, a list instead of an object, nested ten thousand deep, or
gigabytes long. Every caller wants a dict or a one-line :class:`CompactError` that names the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from compact.errors import CompactError

#: No file compact writes as one JSON object comes near this; a larger one is not read into memory.
SIZE_LIMIT = 16 * 1024 * 1024


def read_json_object(path: str | Path, remedy: str = "") -> dict[str, Any]:
    """``path``'s JSON object; anything else raises a :class:`CompactError` naming ``path``, what is wrong
    with it and, when given, ``remedy`` (what the user can do about it)."""
    path = Path(path)
    tail = f"; {remedy}" if remedy else ""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise CompactError(f"{path} cannot be read ({exc.strerror or type(exc).__name__}){tail}") from None
    if not path.is_file():
        why = "not a regular file"
    elif size > SIZE_LIMIT:
        why = f"{size} bytes, more than the {SIZE_LIMIT} a compact JSON file may have"
    else:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            why = " ".join(str(exc).split())[:120] or type(exc).__name__
        else:
            if isinstance(data, dict):
                return data
            why = f"a JSON {type(data).__name__}, not an object"
    raise CompactError(f"{path} is damaged ({why}){tail}")


def try_read_json_object(path: str | Path) -> dict[str, Any] | None:
    """``path``'s JSON object, or None when it is missing or damaged (for files that are only a hint)."""
    try:
        return read_json_object(path)
    except CompactError:
        return None

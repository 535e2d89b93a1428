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
#: A metrics history (one JSON object per line, per epoch) of a 10,000-epoch run is a few MB.
LINES_SIZE_LIMIT = 256 * 1024 * 1024


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


def read_json_lines(path: str | Path) -> list[dict[str, Any]]:
    """The JSON objects of ``path``, one per non-blank line (a ``metrics.jsonl``); a missing file is an
    empty list, anything else that is not such a file raises a :class:`CompactError` naming the line."""
    path = Path(path)
    if not path.exists():
        return []
    if not path.is_file():
        raise CompactError(f"{path} is damaged (not a regular file)")
    size = path.stat().st_size
    if size > LINES_SIZE_LIMIT:
        raise CompactError(f"{path} is damaged ({size} bytes, more than the {LINES_SIZE_LIMIT} a history may have)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CompactError(f"{path} cannot be read ({' '.join(str(exc).split())[:120]})") from None
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError) as exc:
            raise CompactError(f"{path} is damaged: line {n}: {' '.join(str(exc).split())[:120]}") from None
        if not isinstance(record, dict):
            raise CompactError(f"{path} is damaged: line {n} is a JSON {type(record).__name__}, not an object")
        records.append(record)
    return records

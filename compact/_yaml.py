"""Reading YAML from files a stranger may have written: plain data only, bounded in size and expansion.

``yaml.safe_load`` constructs no Python objects, but it still expands aliases: a 1 KB file of nested
aliases (a "billion laughs") grows without end when compact walks or copies the result. compact's files
(training configurations, run folders' ``config.yaml``, recipes) never need aliases, so they are refused,
as are files over :data:`MAX_BYTES`, text that is not UTF-8, and nesting deeper than Python can walk.

Numbers such as ``1e-3`` (no decimal point) are read as floats, as a user means them; PyYAML's YAML 1.1
rules would read them as strings.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from compact.errors import CompactError

#: the largest YAML file compact reads (its own files are a few KB)
MAX_BYTES = 1 << 20


class _PlainLoader(yaml.SafeLoader):
    """``SafeLoader`` without aliases, with ``1e-3``-style floats."""

    def compose_node(self, parent, index):  # noqa: ANN001 (PyYAML's signature)
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed in compact's YAML files", mark
            )
        return super().compose_node(parent, index)


_PlainLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300]


def load_yaml_text(text: str, where: str) -> Any:
    """The plain data in ``text`` (mappings, lists, strings, numbers, booleans, null)."""
    if len(text) > MAX_BYTES:
        raise CompactError(f"{where} is larger than {MAX_BYTES // 1024} KB; compact's YAML files are small")
    try:
        return yaml.load(text, Loader=_PlainLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise CompactError(f"{where} is not valid YAML for compact: {_first_line(exc)}") from None
    except RecursionError:
        raise CompactError(f"{where} is nested too deeply") from None


def read_yaml_file(path: str | Path, what: str = "YAML file") -> Any:
    """:func:`load_yaml_text` of the file ``path``; a missing, huge, binary or malformed file is a
    :class:`CompactError` naming it."""
    path = Path(path)
    if path.exists() and not path.is_file() and not path.is_dir():  # a FIFO or a device would block or never end
        raise CompactError(f"{what} {path} is not a regular file")
    try:
        if path.stat().st_size > MAX_BYTES:
            raise CompactError(f"{what} {path} is larger than {MAX_BYTES // 1024} KB; compact's YAML files are small")
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CompactError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise CompactError(f"{what} {path} is a folder, not a file") from None
    except OSError as exc:
        raise CompactError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CompactError(f"{what} {path} is not a text file (not UTF-8)") from None
    if "\x00" in text:
        raise CompactError(f"{what} {path} is not a text file (it holds NUL bytes)")
    return load_yaml_text(text, f"{what} {path}")


def plain_value(value: Any, where: str) -> Any:
    """``value`` if it is plain data compact's options take (numbers, strings, booleans, null, lists of
    those); dates, binary blobs and mappings are refused."""
    scalar = (bool, int, float, str, type(None))
    if isinstance(value, scalar) or (isinstance(value, list) and all(isinstance(v, scalar) for v in value)):
        return value
    raise CompactError(f"{where}: expected a number, string, boolean or a list of them, got {type(value).__name__}")

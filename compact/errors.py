"""Errors that compact raises for bad input.

Every error names what was wrong and, where there is a fixed set of valid values, lists them. The CLI
prints the message of a :class:`CompactError` without a traceback and exits with status 2.
"""

from __future__ import annotations

from collections.abc import Iterable


class CompactError(ValueError):
    """A user-facing error: bad input, a missing file, an unsupported combination."""


class UnknownNameError(CompactError, KeyError):
    """A name that a registry does not know; the message lists the names it does know."""

    def __init__(self, kind: str, name: str, valid: Iterable[str], hint: str = "") -> None:
        self.kind = kind
        self.name = name
        self.valid = sorted(valid)
        listed = ", ".join(self.valid) if self.valid else "(none registered)"
        msg = f"unknown {kind} {name!r}; valid {kind}s: {listed}"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]

"""Writing files so that a crash or an error never leaves a half-written or clobbered file behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield Path(tmp)
        # mkstemp creates 0600, and some writers (safetensors) recreate the file 0600: give every file the
        # permissions open() would, so that all files of a run have one mode
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def refuse_links(folder: str | Path) -> None:
    """Raise :class:`~compact.errors.CompactError` when ``folder`` holds a symbolic link anywhere inside it.

    compact writes only inside the folder a user names; a link inside it (in a run folder copied from
    someone else, say) would carry later writes, such as a resumed run's exports, to wherever it points.
    ``folder`` itself may be a link: the user named it."""
    from compact.errors import CompactError

    folder = Path(folder)
    if not folder.is_dir():
        return
    for root, dirs, files in os.walk(folder):  # does not descend into linked folders
        for name in dirs + files:
            path = Path(root) / name
            if path.is_symlink():
                raise CompactError(
                    f"{path} is a symbolic link; compact writes only inside {folder} and will not write through "
                    "it: replace the link by a copy of what it points to, or use another output folder"
                )


def write_text(path: str | Path, text: str) -> None:
    """Replace ``path``'s content with ``text`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)

"""Files that ship inside the package: comparison recipes and training configurations.

Recipes live in the repository's ``baselines/`` folder, which is installed as the package
``compact.baselines``; training configurations in ``compact/configs/``. A command that takes a recipe or a
config accepts a file path or the bare name of a shipped file (``demo``, ``paper-cifar``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from compact.errors import CompactError

#: kind of file -> the package that holds the shipped ones
PACKAGES = {"recipe": "compact.baselines", "config": "compact.configs"}


def shipped(kind: str) -> dict[str, Path]:
    """Name (file name without ``.yaml``) -> path of every shipped file of ``kind``, sorted by name."""
    if kind not in PACKAGES:
        raise CompactError(f"unknown kind of shipped file {kind!r}; valid: {', '.join(PACKAGES)}")
    root = resources.files(PACKAGES[kind])
    names = sorted(p.name for p in root.iterdir() if p.name.endswith(".yaml") and p.is_file())
    return {name[: -len(".yaml")]: Path(str(root / name)) for name in names}


def resolve(kind: str, name_or_path: str | Path) -> Path:
    """The file ``name_or_path`` when it exists, else the shipped file of that name.

    A path that exists always wins, so a local ``demo.yaml`` is not shadowed by the shipped one.
    """
    path = Path(name_or_path)
    if path.is_file():
        return path
    if path.is_dir():
        raise CompactError(f"{kind} file {path} is a folder, not a file")
    if path.exists():
        raise CompactError(f"{kind} file {path} is not a regular file")
    files = shipped(kind)
    name = str(name_or_path)
    if name in files:
        return files[name]
    if path.suffix or len(path.parts) > 1:
        raise CompactError(f"{kind} file {path} does not exist")
    raise CompactError(
        f"{kind} {name!r} is neither a file nor one of compact's {kind}s; shipped: {', '.join(files) or 'none'}"
    )

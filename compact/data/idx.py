"""Reading the IDX format of (Fashion-)MNIST, gzip-compressed or not, without running code from the file.

An IDX file is a magic number (two zero bytes, a type code, the number of dimensions), one big-endian
uint32 per dimension, then the data. compact reads only unsigned-byte (type 0x08) files, which is what
MNIST-style images and labels are.
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import torch

from compact.errors import CompactError


def read_idx(path: str | Path) -> torch.Tensor:
    """Return the uint8 tensor stored in ``path``; corrupt or truncated files raise naming the file."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as exc:  # gzip's CRC/length errors are OSError/EOFError
        raise CompactError(f"cannot read {path}: {exc} (the file is corrupt or truncated)") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise CompactError(f"{path} is not an IDX file (bad magic number)")
    dtype, ndim = raw[2], raw[3]
    if dtype != 0x08:
        raise CompactError(f"{path}: IDX type 0x{dtype:02x} is not supported (only unsigned bytes, 0x08)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CompactError(f"{path} is truncated (incomplete IDX header)")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = int(np.prod(shape)) if shape else 0
    if len(raw) - header != expected:
        raise CompactError(
            f"{path} is truncated or corrupt: header says shape {shape} ({expected} bytes), "
            f"file holds {len(raw) - header} bytes of data"
        )
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy())

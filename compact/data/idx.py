"""Reading the IDX format of (Fashion-)MNIST, gzip-compressed or not, without running code from the file.

An IDX file is a magic number (two zero bytes, a type code, the number of dimensions), one big-endian
uint32 per dimension, then the data. compact reads only unsigned-byte (type 0x08) files, which is what
MNIST-style images and labels are.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

from compact.errors import CompactError

#: the largest IDX payload read (Fashion-MNIST's training images are 47 MB): a file, or a gzip stream,
#: declaring more is refused before anything of that size is allocated
MAX_BYTES = 512 << 20


def read_idx(path: str | Path) -> torch.Tensor:
    """Return the uint8 tensor stored in ``path``; corrupt, truncated or oversized files raise naming the file."""
    path = Path(path)
    if not path.is_file():  # a FIFO or a device would block reading
        raise CompactError(f"{path} is not a regular file (an IDX file was expected)")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            head = f.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0:
                raise CompactError(f"{path} is not an IDX file (bad magic number)")
            dtype, ndim = head[2], head[3]
            if dtype != 0x08:
                raise CompactError(f"{path}: IDX type 0x{dtype:02x} is not supported (only unsigned bytes, 0x08)")
            if not 1 <= ndim <= 4:
                raise CompactError(f"{path}: IDX files of {ndim} dimensions are not supported (1..4)")
            dims = f.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise CompactError(f"{path} is truncated (incomplete IDX header)")
            shape = struct.unpack(f">{ndim}I", dims)
            expected = math.prod(shape)
            if expected > MAX_BYTES:
                raise CompactError(
                    f"{path}: the header declares shape {shape} ({expected:,} bytes), more than the "
                    f"{MAX_BYTES >> 20} MB compact reads from an IDX file"
                )
            raw = f.read(expected + 1)  # one byte more: a longer file is corrupt too
    except (OSError, EOFError, zlib.error) as exc:  # gzip's CRC/length errors are OSError/EOFError
        raise CompactError(f"cannot read {path}: {exc} (the file is corrupt or truncated)") from None
    if len(raw) != expected:
        raise CompactError(
            f"{path} is truncated or corrupt: header says shape {shape} ({expected} bytes), "
            f"file holds {'more' if len(raw) > expected else len(raw)} bytes of data"
        )
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).reshape(shape).copy())

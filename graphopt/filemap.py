"""Reading weights straight out of a file: copy-on-write memory maps instead of copies.

Saved models (``.graphopt`` bundles, native ``.npz`` artifacts) store each tensor's bytes
contiguously, so loading can hand out numpy *views of a memory map of the file* instead of
reading every byte into fresh memory:

* **Near-instant loads.** Nothing is read until a kernel touches it; a model that is packed for
  the native runtime is read once, page by page, while it is packed.
* **Pages are shared between processes.** The mapping is private (``MAP_PRIVATE``, numpy's
  ``mode="c"``): pages that are only read are the kernel's page cache of the file, shared by
  every process that maps it (several server workers on one host hold one copy), and they count
  as file-backed memory the kernel can drop and re-read, not as anonymous memory.
* **Copy-on-write.** The arrays are writable, but a write copies that page into the writing
  process only; the file is never modified (training a module loaded from a bundle is safe).

Caveat: a mapped file must not be truncated or rewritten *in place* while it is mapped (the
process would get SIGBUS on the next access to a vanished page). graphopt's own writers never
do that: :mod:`graphopt.fileio` writes a new file and renames it over the old one, which leaves
existing mappings reading the old, still-open inode.

A tensor is mapped only where its bytes are aligned to its element size in the file; anything
else (a file object, an empty data region, a misaligned tensor from another writer) is read
into memory as before, so callers get the same arrays either way.
"""

from __future__ import annotations

import mmap
import os
from typing import IO

import numpy as np


def map_region(source: str | os.PathLike | IO[bytes], offset: int,
               length: int) -> np.ndarray | None:
    """A copy-on-write ``uint8`` memory map of ``length`` bytes of a file from ``offset``.

    ``source`` is a path, or a binary file object opened on a regular file (mapping the
    already opened and checked file, not a path that could be swapped in between). Returns
    None where the region is empty or the file cannot be mapped (the caller reads it instead).
    The caller has checked that ``offset + length`` lies inside the file.
    """
    if length <= 0:
        return None
    target = source if hasattr(source, "fileno") else os.fspath(source)
    try:
        return np.memmap(target, dtype=np.uint8, mode="c", offset=offset, shape=(length,))
    except (OSError, ValueError):  # a special file, a file system without mmap
        return None


def view_of(region: np.ndarray | None, begin: int, shape: tuple[int, ...],
            dtype: np.dtype, fortran_order: bool = False) -> np.ndarray | None:
    """The array of ``shape``/``dtype`` whose bytes start at ``begin`` of a mapped ``region``,
    or None where there is no region or the bytes are not aligned to the element size."""
    if region is None:
        return None
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    nbytes = count * dtype.itemsize
    if begin < 0 or begin + nbytes > region.shape[0]:
        return None
    if (region.ctypes.data + begin) % dtype.itemsize:
        return None
    flat = region[begin:begin + nbytes].view(dtype)
    return flat.reshape(shape, order="F" if fortran_order else "C")


def is_file_mapped(array: np.ndarray) -> bool:
    """Whether ``array``'s memory is (a view of) a memory-mapped file."""
    base = array
    while base is not None:
        if isinstance(base, (np.memmap, mmap.mmap)):
            return True
        base = getattr(base, "base", None)
    return False


__all__ = ["is_file_mapped", "map_region", "view_of"]

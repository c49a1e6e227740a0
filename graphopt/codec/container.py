"""The compressed-model container (``.gcm``): named binary sections, each with a CRC-32, behind
a versioned header and a JSON directory. No pickle, no code: reading a file parses a fixed
header, a JSON object and byte ranges, all checked before anything is trusted.

Layout (little endian)::

    0   magic      4 bytes  b"GCM\\0"
    4   version    u16      FORMAT_VERSION
    6   flags      u16      0 (reserved)
    8   dir_len    u32      bytes of the (zlib-compressed) directory
    12  dir_crc    u32      CRC-32 of those bytes
    16  directory  dir_len bytes: zlib of UTF-8 JSON (at most MAX_DIRECTORY_BYTES inflated)
                   {"meta": {...}, "sections": [{"name", "offset", "length", "crc32"}, ...]}
    ..  sections   each at its offset (8-byte aligned, in directory order)

A reader refuses: a wrong magic or a newer version, a directory or section outside the file or
overlapping another, a CRC mismatch (naming the section), sizes over the memory budget
(``graphopt.limits``) — a truncated or bit-flipped file is an error, never a silently wrong
weight.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib

from graphopt.errors import CompressionError
from graphopt.fileio import atomic_write
from graphopt.limits import check_bytes

MAGIC = b"GCM\x00"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<4sHHII")
MAX_DIRECTORY_BYTES = 16 << 20


def _aligned(n: int) -> int:
    return (n + 7) & ~7


def write_container(path: str | os.PathLike, sections: dict[str, bytes], meta: dict) -> int:
    """Write ``sections`` (name -> bytes) and ``meta`` (JSON-able) to ``path``; returns the
    file size in bytes."""
    directory, offset = [], 0
    for name, payload in sections.items():
        directory.append({"name": name, "offset": offset, "length": len(payload),
                          "crc32": zlib.crc32(payload)})
        offset = _aligned(offset + len(payload))
    # Offsets are relative to the end of the directory, so the directory can be sized first.
    text = zlib.compress(json.dumps({"meta": meta, "sections": directory},
                                    separators=(",", ":"), sort_keys=True).encode("utf-8"), 9)
    start = _aligned(_HEADER.size + len(text))
    with atomic_write(path) as f:  # a reader never sees half a file; no symlink is followed
        f.write(_HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(text), zlib.crc32(text)))
        f.write(text)
        f.write(b"\0" * (start - _HEADER.size - len(text)))
        for i, payload in enumerate(sections.values()):
            f.write(payload)
            if i + 1 < len(sections):  # no padding after the last: any cut loses data
                f.write(b"\0" * (_aligned(len(payload)) - len(payload)))
        return f.tell()


def read_container(path: str | os.PathLike) -> tuple[dict, dict[str, bytes]]:
    """(meta, sections) of a container file, every check passed (see the module doc)."""
    where = os.fspath(path)
    try:
        with open(where, "rb") as f:
            return _read_stream(f, where, os.fstat(f.fileno()).st_size)
    except OSError as exc:
        raise CompressionError(f"{where}: cannot read the file ({exc.strerror or exc})") from None


def read_container_bytes(data: bytes, where: str = "<in-memory .gcm>"
                         ) -> tuple[dict, dict[str, bytes]]:
    """``read_container`` of a file's bytes (``where`` names it in errors)."""
    return _read_stream(io.BytesIO(data), where, len(data))


def _read_stream(f, where: str, size: int) -> tuple[dict, dict[str, bytes]]:
    head = f.read(_HEADER.size)
    if len(head) < _HEADER.size:
        raise CompressionError(f"{where}: {len(head)} bytes, shorter than a .gcm header")
    magic, version, _flags, dir_len, dir_crc = _HEADER.unpack(head)
    if magic != MAGIC:
        raise CompressionError(f"{where}: not a graphopt compressed model (magic {magic!r})")
    if version > FORMAT_VERSION or version < 1:
        raise CompressionError(f"{where}: format version {version}; this graphopt reads "
                               f"up to {FORMAT_VERSION} (upgrade graphopt)")
    if dir_len > min(MAX_DIRECTORY_BYTES, size - _HEADER.size):
        raise CompressionError(f"{where}: the directory ({dir_len} bytes) does not fit the "
                               f"file ({size} bytes): truncated or corrupt")
    text = f.read(dir_len)
    if zlib.crc32(text) != dir_crc:
        raise CompressionError(f"{where}: the directory's checksum does not match (corrupt)")
    try:
        inflate = zlib.decompressobj()
        plain = inflate.decompress(text, MAX_DIRECTORY_BYTES)
        if inflate.unconsumed_tail or not inflate.eof:
            raise ValueError(f"the directory inflates past {MAX_DIRECTORY_BYTES} bytes or "
                             "is cut short")
        directory = json.loads(plain.decode("utf-8"))
        meta, entries = directory["meta"], directory["sections"]
        if not isinstance(meta, dict) or not isinstance(entries, list):
            raise TypeError("meta must be an object and sections a list")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, zlib.error,
            RecursionError) as exc:
        raise CompressionError(f"{where}: malformed directory: {exc}") from None
    start = _aligned(_HEADER.size + dir_len)
    sections = _read_sections(f, where, entries, start, size)
    return meta, sections


def _read_sections(f, where: str, entries: list, start: int, size: int) -> dict[str, bytes]:
    sections, end_of_previous = {}, 0
    for entry in entries:
        try:
            name, offset = str(entry["name"]), int(entry["offset"])
            length, crc = int(entry["length"]), int(entry["crc32"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CompressionError(f"{where}: malformed section entry {entry!r}: {exc}") \
                from None
        if name in sections:
            raise CompressionError(f"{where}: section '{name}' appears twice")
        if offset < end_of_previous or length < 0 or start + offset + length > size:
            raise CompressionError(f"{where}: section '{name}' ({length} bytes at {offset}) "
                                   "lies outside the file or over another: truncated or "
                                   "corrupt")
        check_bytes(length, f"{where}: section '{name}'")
        f.seek(start + offset)
        payload = f.read(length)
        if zlib.crc32(payload) != crc:
            raise CompressionError(f"{where}: section '{name}' fails its checksum (corrupt)")
        sections[name] = payload
        end_of_previous = offset + length
    return sections

"""Writing output files safely: atomically, and never through a symlink out of the output folder.

Every file graphopt writes (an ONNX model and its external data, a torch ``.graphopt`` bundle, a
native artifact, CLI reports) goes through :func:`atomic_write`:

* **Atomic.** The bytes go to a temporary file in the target's own folder (same file system),
  which is flushed, ``fsync``'d and then ``os.replace``'d onto the target. A reader sees the old
  file or the complete new one, never a half-written model; on any error (disk full, an exception
  in the writer, Ctrl-C) the temporary file is removed and the target is left as it was.
* **No symlink following.** The temporary file is created with ``O_EXCL`` (``tempfile.mkstemp``)
  and renamed over the target, so even a symlink planted at the target is *replaced*, not
  written through. Before writing, :func:`safe_output_path` refuses a target that is itself a
  symlink (someone expecting ``model.onnx.data -> ~/.bashrc`` to be followed gets an error
  instead), and, given ``root``, a target that resolves outside ``root`` (``root/../x``, or a
  folder under ``root`` that is a symlink to elsewhere). Both raise
  :class:`~graphopt.errors.UnsafeInputError` naming the path.

Example::

    with atomic_write("model.onnx") as f:
        f.write(model.SerializeToString())

    with atomic_output_path("model.npz") as temp:   # for writers that want a file name
        np.savez(temp, **arrays)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import IO

from graphopt.errors import GraphoptError, UnsafeInputError


def safe_output_path(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """Check that writing ``path`` cannot be redirected by a symlink; returns it made absolute.

    Args:
        path: the file about to be written.
        root: the folder the file must stay in (e.g. an ONNX model's folder for its external
            data); None: only the target itself is checked.

    Returns:
        ``path`` as an absolute, normalized path (symlinks in its folder are not resolved).

    Raises:
        UnsafeInputError: ``path`` is a symlink (dangling or not), or with ``root``, ``path``
            lies or resolves (through ``..`` or symlinked folders) outside ``root``.
    """
    text = os.fspath(path)
    absolute = os.path.abspath(text)
    if os.path.islink(absolute):
        raise UnsafeInputError(
            f"refusing to write {text}: it is a symlink (to {os.readlink(absolute)}); writing "
            "would replace the link, not its target. Remove the link or choose another name")
    if root is not None:
        root_real = os.path.realpath(os.fspath(root))
        folder_real = os.path.realpath(os.path.dirname(absolute))
        target_real = os.path.join(folder_real, os.path.basename(absolute))
        if os.path.commonpath([root_real, target_real]) != root_real or target_real == root_real:
            raise UnsafeInputError(
                f"refusing to write {text}: it resolves to {target_real}, outside the output "
                f"folder {root_real} (through '..' or a symlinked folder)")
    return absolute


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *,
                 root: str | os.PathLike | None = None,
                 encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file that replaces ``path`` when the block exits without an error.

    Args:
        path: the file to (re)write; its folder must exist.
        mode: ``"wb"`` (default) or ``"w"`` (text, UTF-8 unless ``encoding`` is given).
        root: passed to :func:`safe_output_path`: the folder ``path`` must stay inside.
        encoding: text mode's encoding.

    Yields:
        The open temporary file (write to it; do not close it).

    Raises:
        UnsafeInputError: see :func:`safe_output_path`.
        ValueError: ``mode`` is not a write mode this function supports.
        OSError: the folder does not exist or is not writable (no file is left behind).
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"atomic_write supports modes 'wb' and 'w', got {mode!r}")
    target = safe_output_path(path, root)
    folder, name = os.path.split(target)
    fd, temp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, _new_file_mode(target))
        if mode == "w":
            f = os.fdopen(fd, "w", encoding=encoding or "utf-8")
        else:
            f = os.fdopen(fd, "wb")
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_folder(folder)


@contextlib.contextmanager
def atomic_output_path(path: str | os.PathLike, *,
                       root: str | os.PathLike | None = None) -> Iterator[str]:
    """:func:`atomic_write` for writers that take a file *name* (``np.savez``, a library's
    ``save(path)``): yields a fresh temporary path in ``path``'s folder, with ``path``'s
    extension, that replaces ``path`` when the block exits without an error.

    Raises:
        UnsafeInputError: see :func:`safe_output_path`.
        GraphoptError: the block did not write the temporary file (a writer that appended its
            own suffix, say).
    """
    target = safe_output_path(path, root)
    folder, name = os.path.split(target)
    stem, ext = os.path.splitext(name)
    fd, temp = tempfile.mkstemp(prefix=f".{stem}.", suffix=f".tmp{ext}", dir=folder)
    os.close(fd)
    try:
        os.chmod(temp, _new_file_mode(target))
        yield temp
        if os.path.islink(temp) or not os.path.isfile(temp):
            raise GraphoptError(f"writing {target}: the writer did not produce {temp}")
        with open(temp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_folder(folder)


def _new_file_mode(target: str) -> int:
    """Permissions for the new file: the replaced file's, else 0o666 minus the umask.

    ``mkstemp`` creates 0o600 files; a model written by graphopt should get the permissions any
    other new file would (the umask is read without changing it where /proc allows).
    """
    try:
        return os.stat(target).st_mode & 0o7777
    except OSError:
        pass
    return 0o666 & ~_umask()


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # no /proc: read it the classic way (briefly sets it)
    os.umask(mask)
    return mask


def _fsync_folder(folder: str) -> None:
    """Make the rename durable too (best effort: some file systems refuse directory fsync)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


__all__ = ["atomic_output_path", "atomic_write", "safe_output_path"]

"""Safe output writing: temp file + rename, never over an input, never over a result unasked.

A reader (or a killed process) sees either the old file or the complete new one, never half a
file: the data goes to a hidden temp file in the destination folder and is moved into place with
``os.replace``, which is atomic on one file system.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

from scar_runtime.errors import OutputError

_UMASK = os.umask(0)
os.umask(_UMASK)


def _suffix(path: Path) -> str:
    # Keep the real extension on the temp file: nibabel picks gzip from ".nii.gz".
    name = path.name
    for ext in (".nii.gz", ".tar.gz"):
        if name.endswith(ext):
            return ext
    return path.suffix


def check_output_path(path: Path, *, force: bool, inputs: Iterable[Path] = ()) -> None:
    """Refuse an output that is an input, or that exists without ``force``."""
    path = Path(path)
    for src in inputs:
        src = Path(src)
        if src.exists() and path.exists() and os.path.samefile(src, path):
            raise OutputError(f"refusing to write over the input {src}")
        if path.resolve() == src.resolve():
            raise OutputError(f"refusing to write over the input {src}")
    if path.exists() and not force:
        raise OutputError(f"{path} already exists (use --force to replace it)")
    if path.exists() and path.is_dir():
        raise OutputError(f"{path} is a folder, expected a file path")


def _output_folder(path: Path) -> Path:
    """The folder ``path`` will be written in, which must exist and be writable."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"output folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"output folder {folder} is not writable")
    return folder


def atomic_write(
    path: Path | str,
    write: Callable[[Path], None],
    *,
    force: bool = False,
    inputs: Iterable[Path] = (),
) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically.

    ``write`` must create the file it is given. On any failure the temp file is removed and
    ``path`` is untouched.
    """
    path = Path(path)
    inputs = [Path(p) for p in inputs]
    check_output_path(path, force=force, inputs=inputs)
    folder = _output_folder(path)
    try:
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp"
                                        + _suffix(path))
    except OSError as e:
        raise OutputError(f"cannot write in {folder}: {e.strerror}") from e
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs are ordinary files
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # Re-check right before the rename: another process may have created it meanwhile.
        if path.exists() and not force:
            raise OutputError(f"{path} already exists (use --force to replace it)")
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from e
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def _write_unnamed(folder: Path, data: bytes) -> int | None:
    """An O_TMPFILE file holding ``data`` (see :func:`_stream_unnamed`)."""
    return _stream_unnamed(folder, lambda f: f.write(data))


def _stream_unnamed(folder: Path, write: Callable[[BinaryIO], object]) -> int | None:
    """An O_TMPFILE file filled by ``write(file_object)``: it has no name, so if the process
    dies (even by SIGKILL) before it is linked, nothing is left behind. None where unsupported."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None:
        return None
    try:
        fd = os.open(folder, flag | os.O_WRONLY, 0o666 & ~_UMASK)
    except OSError:
        return None
    try:
        with os.fdopen(os.dup(fd), "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.close(fd)
        raise
    return fd


def _publish_unnamed(fd: int, path: Path) -> None:
    """Link the unnamed file under a temp name and rename it over ``path`` (both atomic)."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    _link_fd(fd, tmp)
    os.replace(tmp, path)


def _link_fd(fd: int, path: Path) -> None:
    """Give the unnamed file ``fd`` a name: linkat(/proc/self/fd/N, AT_SYMLINK_FOLLOW). Python
    calls plain link() unless a dir_fd is passed, and link() would link the /proc symlink."""
    proc = os.open("/proc/self/fd", os.O_RDONLY)
    try:
        os.link(str(fd), path, src_dir_fd=proc, follow_symlinks=True)
    finally:
        os.close(proc)


def write_files_atomic(files: dict[Path, bytes], *, force: bool = False,
                       inputs: Iterable[Path] = ()) -> list[Path]:
    """Write several files as one step: every check first, all data next, then the renames.

    With O_TMPFILE (Linux) the data lives in unnamed files until the very end, so a process killed
    while writing leaves no file at all; each file then appears by link + rename, both atomic.
    """
    inputs = [Path(p) for p in inputs]
    for path in files:
        check_output_path(path, force=force, inputs=inputs)
    staged: list[tuple[int | None, Path, bytes]] = []
    done: list[Path] = []
    try:
        for path, data in files.items():
            staged.append((_write_unnamed(path.parent, data), path, data))
        for fd, path, data in staged:
            if fd is None:  # no O_TMPFILE: classic named temp file
                atomic_write_bytes(path, data, force=True)
            else:
                _publish_unnamed(fd, path)
            done.append(path)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from e
    finally:
        for fd, _, _ in staged:
            if fd is not None:
                os.close(fd)
    return done


def atomic_write_stream(path: Path | str, write: Callable[[BinaryIO], object], *,
                        force: bool = False, inputs: Iterable[Path] = ()) -> Path:
    """Like :func:`atomic_write`, but ``write`` gets a binary file object. With O_TMPFILE the
    data stays nameless until it is complete, so even SIGKILL leaves no temp file (checkpoints
    are written while a training run may be killed at any moment)."""
    path = Path(path)
    check_output_path(path, force=force, inputs=inputs)
    folder = _output_folder(path)
    try:
        fd = _stream_unnamed(folder, write)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from e
    if fd is None:  # no O_TMPFILE here: a named temp file, removed on any Python-level failure

        def write_named(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                write(f)

        return atomic_write(path, write_named, force=force, inputs=inputs)
    try:
        if path.exists() and not force:
            raise OutputError(f"{path} already exists (use --force to replace it)")
        _publish_unnamed(fd, path)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from e
    finally:
        os.close(fd)
    return path


def atomic_write_bytes(path: Path | str, data: bytes, **kw) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), **kw)


def atomic_write_text(path: Path | str, text: str, **kw) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), **kw)

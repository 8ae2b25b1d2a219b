"""Safe output writing: temp file + rename, never over an input, never over a result unasked.

A reader (or a killed process) sees either the old file or the complete new one, never half a
file: the data goes to a hidden temp file in the destination folder and is moved into place with
``os.replace``, which is atomic on one file system.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from scar_runtime.core.errors import OutputError

_UMASK = os.umask(0)
os.umask(_UMASK)


def _suffix(path: Path) -> str:
    # Keep the real extension on the temp file: nibabel picks gzip from ".nii.gz".
    name = path.name
    for ext in (".nii.gz", ".tar.gz"):
        if name.endswith(ext):
            return ext
    return path.suffix


def _real(path: Path) -> str:
    return os.path.realpath(path)  # never raises, not even on a symlink loop


class InputSet:
    """The files a command reads, built once, so that "is this output one of them?" costs the
    same for the 3000th case of a folder as for the first (a folder run is linear, not
    quadratic). A path matches by its resolved name or by its inode (a hard link)."""

    def __init__(self, paths: Iterable[Path | str] = ()):
        self._names: dict[str, Path] = {}
        self._inodes: dict[tuple[int, int], Path] = {}
        for p in paths:
            self.add(Path(p))

    def add(self, path: Path) -> None:
        self._names[_real(path)] = path
        with contextlib.suppress(OSError):
            st = path.stat()
            self._inodes[(st.st_dev, st.st_ino)] = path

    def find(self, path: Path) -> Path | None:
        hit = self._names.get(_real(path))
        if hit is not None or not self._inodes:
            return hit
        try:
            st = path.stat()
        except OSError:
            return None
        return self._inodes.get((st.st_dev, st.st_ino))


def as_input_set(inputs: Iterable[Path | str] | InputSet) -> InputSet:
    return inputs if isinstance(inputs, InputSet) else InputSet(inputs)


def check_output_path(path: Path, *, force: bool,
                      inputs: Iterable[Path | str] | InputSet = ()) -> None:
    """Refuse an output that is an input (with or without ``force``: inputs are never outputs),
    or that exists without ``force``."""
    path = Path(path)
    src = as_input_set(inputs).find(path)
    if src is not None:
        raise OutputError(f"refusing to write over the input {src} (an input is never an output,"
                          " --force or not; choose another output folder)")
    if path.exists() and not force:
        raise OutputError(f"{path} already exists (use --force to replace it)")
    if path.exists() and path.is_dir():
        raise OutputError(f"{path} is a folder, expected a file path")


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """While a named temp file exists, SIGTERM and SIGHUP raise ``KeyboardInterrupt`` (as
    Ctrl-C does) instead of killing the process on the spot, so the ``except`` that removes the
    temp file runs. Only the main thread can set handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, _frame):
        raise KeyboardInterrupt(f"terminated by {signal.Signals(signum).name}")

    old = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        with contextlib.suppress(OSError, ValueError):
            if signal.getsignal(sig) in (signal.SIG_DFL, None):
                old[sig] = signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def check_folder_creatable(folder: Path | str, what: str = "") -> None:
    """Refuse an output folder that is a file, lies under a file, or cannot be written or
    created, before any work (a training run must not find out after loading its data).
    ``what`` names it in the message ("output folder")."""
    folder = Path(folder)
    name = f"{what} {folder}" if what else str(folder)
    if folder.exists():
        if not folder.is_dir():
            raise OutputError(f"{name} is a file, expected a folder")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise OutputError(f"{name} is not writable")
        return
    parent = folder.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(f"cannot create {name}: {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot create {name}: {parent} is not writable")


def make_output_folder(folder: Path | str) -> Path:
    """An output folder, created (with its parents) unless it exists; refused in one line when
    it is a file, lies under a file or cannot be written."""
    folder = Path(folder)
    check_folder_creatable(folder, "output folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create output folder {folder}: {e.strerror}") from e
    return folder


def check_output_folder(path: Path) -> Path:
    """The folder ``path`` will be written in, which must exist and be writable."""
    folder = path.parent if str(path.parent) else Path(".")
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"cannot write {path}: {folder} is not a folder")
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
    inputs: Iterable[Path] | InputSet = (),
) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically.

    ``write`` must create the file it is given. On any failure the temp file is removed and
    ``path`` is untouched.
    """
    path = Path(path)
    check_output_path(path, force=force, inputs=inputs)
    folder = check_output_folder(path)
    with signals_raise():
        return _write_via_named_temp(path, folder, write, force=force)


def _write_via_named_temp(path: Path, folder: Path, write: Callable[[Path], None], *,
                          force: bool) -> Path:
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


# errno values meaning "this kernel or file system has no O_TMPFILE": fall back to a named temp
# file. Any other failure (no space, no inodes, no permission) is a real error.
_NO_TMPFILE = {errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOSYS}


def _open_unnamed(folder: Path) -> int | None:
    """A nameless file (O_TMPFILE) in ``folder``: if the process dies, even by SIGKILL, before
    it is linked, nothing is left behind. None where the file system cannot make one."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None:
        return None
    try:
        return os.open(folder, flag | os.O_RDWR, 0o666 & ~_UMASK)
    except OSError as e:
        if e.errno in _NO_TMPFILE:
            return None
        raise


def _stream_unnamed(folder: Path, write: Callable[[BinaryIO], object]) -> int | None:
    """An O_TMPFILE file filled by ``write(file_object)``; None where unsupported."""
    fd = _open_unnamed(folder)
    if fd is None:
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
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _link_fd(fd: int, path: Path) -> None:
    """Give the unnamed file ``fd`` a name: linkat(/proc/self/fd/N, AT_SYMLINK_FOLLOW). Python
    calls plain link() unless a dir_fd is passed, and link() would link the /proc symlink."""
    proc = os.open("/proc/self/fd", os.O_RDONLY)
    try:
        os.link(str(fd), path, src_dir_fd=proc, follow_symlinks=True)
    finally:
        os.close(proc)


def _stage(path: Path, data: bytes) -> tuple[int | None, Path | None]:
    """The data of one output, complete on disk but not yet visible under its name: an unnamed
    file, or (without O_TMPFILE) a hidden named temp file."""
    fd = _stream_unnamed(path.parent, lambda f: f.write(data))
    if fd is not None:
        return fd, None
    fd_named, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        with os.fdopen(fd_named, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return None, tmp


def write_files_atomic(files: dict[Path, bytes], *, force: bool = False,
                       inputs: Iterable[Path] | InputSet = (),
                       replace: Iterable[Path] = ()) -> list[Path]:
    """Write several files as one step, all or nothing: every check first, all data next, then
    the renames.

    Every file's data is on disk before any name appears, so running out of space or inodes
    (which happens while staging) leaves none of them. Should a rename itself fail, the files of
    this call that already appeared are removed again. With O_TMPFILE (Linux) the data lives in
    unnamed files until the very end, so a process killed while writing leaves no file at all.
    ``replace``: paths replaced even without ``force`` (a shared file such as labels.json).
    """
    inputs = as_input_set(inputs)
    files = {Path(p): d for p, d in files.items()}
    replaceable = {Path(p) for p in replace}
    for path in files:
        check_output_path(path, force=force or path in replaceable, inputs=inputs)
    staged: list[tuple[int | None, Path | None, Path]] = []
    done: list[Path] = []
    current: Path | None = None
    try:
        with signals_raise():
            for path, data in files.items():
                current = path
                fd, tmp = _stage(path, data)
                staged.append((fd, tmp, path))
            for fd, tmp, path in staged:
                current = path
                if not (force or path in replaceable) and path.exists():
                    raise OutputError(f"{path} already exists (use --force to replace it)")
                if fd is not None:
                    _publish_unnamed(fd, path)
                else:
                    os.replace(tmp, path)
                done.append(path)
    except BaseException as e:
        for path in done:  # all or nothing: take back what already appeared
            with contextlib.suppress(OSError):
                path.unlink()
        for _, tmp, path in staged:
            if tmp is not None and path not in done:
                with contextlib.suppress(OSError):
                    tmp.unlink()
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {current}: {e.strerror or e}") from e
        raise
    finally:
        for fd, _, _ in staged:
            if fd is not None:
                os.close(fd)
    return done


def atomic_write_unnamed(path: Path | str, write: Callable[[Path], None], *,
                         force: bool = False, inputs: Iterable[Path] | InputSet = ()) -> Path:
    """Like :func:`atomic_write`, but the file has no name until it is complete: ``write`` gets
    a ``/proc/self/fd/N`` path to create the file at, which may also be opened again to read
    the file back (``scar export`` tests the model there before it is published). A process
    killed by any signal, SIGKILL included, leaves nothing; without O_TMPFILE this is
    :func:`atomic_write` (a named temp file, removed on errors, Ctrl-C and SIGTERM)."""
    path = Path(path)
    check_output_path(path, force=force, inputs=inputs)
    folder = check_output_folder(path)
    try:
        fd = _open_unnamed(folder)
    except OSError as e:
        raise OutputError(f"cannot write in {folder}: {e.strerror or e}") from e
    if fd is None:
        return atomic_write(path, write, force=force, inputs=inputs)
    try:
        write(Path(f"/proc/self/fd/{fd}"))
        os.fsync(fd)
    except OSError as e:
        os.close(fd)
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from e
    except BaseException:
        os.close(fd)
        raise
    return _publish_and_close(fd, path, force)


def atomic_write_stream(path: Path | str, write: Callable[[BinaryIO], object], *,
                        force: bool = False, inputs: Iterable[Path] | InputSet = ()) -> Path:
    """Like :func:`atomic_write`, but ``write`` gets a binary file object. With O_TMPFILE the
    data stays nameless until it is complete, so even SIGKILL leaves no temp file (checkpoints
    are written while a training run may be killed at any moment)."""
    path = Path(path)
    check_output_path(path, force=force, inputs=inputs)
    folder = check_output_folder(path)
    try:
        fd = _stream_unnamed(folder, write)
    except OSError as e:
        raise OutputError(f"cannot write {path}: {e.strerror or e}") from e
    if fd is None:  # no O_TMPFILE here: a named temp file, removed on any Python-level failure

        def write_named(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                write(f)

        return atomic_write(path, write_named, force=force, inputs=inputs)
    return _publish_and_close(fd, path, force)


def _publish_and_close(fd: int, path: Path, force: bool) -> Path:
    """Give the complete nameless file ``fd`` its name (refusing an existing output unless
    ``force``), and close it whatever happens."""
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

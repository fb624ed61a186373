"""Files: write atomically, hash, check an output path.

Every file sr-deploy writes goes through `atomic_write` (or its text / bytes shortcuts): the data is
written under a hidden temporary name beside the target (same folder, so same filesystem and the
rename is atomic), then renamed over the target. A crash, Ctrl-C or full disk leaves the target
as it was, never half-written, and the temporary file is removed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import InputError, SRDeployError
from .storage import is_uri

__all__ = [
    "process_scratch_dir",
    "OutputBusy",
    "exclusive_output",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_folder",
    "check_output_path",
    "file_sha256",
    "partial_path",
    "unique_partial_path",
]


def partial_path(target: str | Path) -> Path:
    """The temporary name `target` is written under before the rename: hidden, beside it, same
    extension (writers such as ffmpeg and matplotlib pick the format from it).
    ``out/w.png`` -> ``out/.w.partial.png``."""
    target = Path(target)
    return target.with_name(f".{target.stem}.partial{target.suffix}")


def unique_partial_path(target: str | Path) -> Path:
    """A new, empty, uniquely named temporary file beside `target` (``out/.w.partial-k3j9.png``):
    for files that several processes may write at once (engine caches, timing caches), where one
    shared temporary name would let two writers mix their bytes."""
    target = Path(target)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}.partial-", suffix=target.suffix)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would stay on the renamed file
    finally:
        os.close(fd)
    return Path(tmp)


def _umask() -> int:
    """This process's umask, read without changing it (Linux); 0o022 where it cannot be read."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


@contextlib.contextmanager
def atomic_write(target: str | Path, *, make_parents: bool = False) -> Iterator[Path]:
    """Yield the temporary path to write `target` under; on a clean exit rename it over `target`.

    On any exception (including KeyboardInterrupt) the temporary file is removed and `target` is
    left untouched. The caller writes the yielded path with whatever writer it has
    (`torch.save`, `onnx.save_model`, `fig.savefig`, `Path.write_text`...)::

        with atomic_write(path) as tmp:
            torch.save(payload, tmp)

    Args:
        target: the final file.
        make_parents: create the target's folder first (otherwise a missing folder is an OSError).

    The temporary name is this writer's own (`unique_partial_path`), so that two processes writing
    one target (two runs, two trainings into one folder) never share a temporary file.
    """
    target = Path(target)
    if make_parents:
        target.parent.mkdir(parents=True, exist_ok=True)
    tmp = unique_partial_path(target)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def atomic_write_bytes(target: str | Path, data: bytes, *, make_parents: bool = False) -> Path:
    """Write `data` to `target` atomically (flushed to disk before the rename); returns `target`."""
    target = Path(target)
    with atomic_write(target, make_parents=make_parents) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return target


def atomic_write_text(target: str | Path, text: str, *, make_parents: bool = False) -> Path:
    """Write `text` (UTF-8) to `target` atomically; returns `target`."""
    return atomic_write_bytes(target, text.encode("utf-8"), make_parents=make_parents)


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """The sha256 hex digest of a file's bytes, read in `chunk`-sized blocks (constant memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def check_output_path(path: str | Path, suffixes: tuple[str, ...] = ()) -> Path:
    """`path` as a Path; InputError unless it can be written: its folder exists and is writable, it
    is not a folder, and its suffix is one of `suffixes` (when given: a report named ``model.pt``
    or ``baby.png`` by a slip would replace the model or an image). Meant to run before long work,
    not after minutes of it."""
    path = check_local_path(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise InputError(f"{path}: expected a {' or '.join(suffixes)} file name")
    if not path.parent.exists():
        raise InputError(f"{path}: the folder {path.parent} does not exist")
    if path.is_dir():
        raise InputError(f"{path}: is a folder, expected a file name")
    _check_writable(path, path.parent)
    return path


def space_note(folder: str | Path, needed: int) -> str:
    """`` (no space left on device: 0.6 MB free)`` when `folder`'s file system has less than `needed`
    bytes free, else ``""``: for writers that fail without saying why (OpenCV's imwrite)."""
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return ""
    return f" (no space left on device: {free / 1e6:.1f} MB free)" if free < needed else ""


def check_output_folder(path: str | Path) -> Path:
    """`path` as a Path; InputError unless it is, or can be made as, a folder this process can write
    in (checked by writing a file there, so read-only mounts count): before long work."""
    path = check_local_path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path}: is a file, expected a folder")
    _check_writable(path, next(p for p in (path, *path.parents) if p.exists()))
    return path


def check_local_path(path: str | Path) -> Path:
    """`path` as a Path; InputError for a URI where a local path is meant (Path() would fold
    ``s3://b/x`` into ``s3:/b/x`` and report a missing folder ``s3:/b``)."""
    if is_uri(path):
        raise InputError(f"{path}: expected a local path (object storage is for upscale's inputs and outputs)")
    return Path(path)


def _check_writable(path: Path, folder: Path) -> None:
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise InputError(f"{path}: cannot write in {folder} ({exc.strerror or exc})") from None


class OutputBusy(SRDeployError):
    """Another process holds the lock of the output this run wants to write (exit code 1)."""


def lock_path(target: str | Path) -> Path:
    """The hidden lock file beside `target`: ``.NAME.lock``."""
    target = Path(target)
    return target.with_name(f".{target.name}.lock")


@contextlib.contextmanager
def exclusive_output(target: str | Path) -> Iterator[Path]:
    """Hold an exclusive lock on `target` for the body: two runs that would write the same output
    (its temporary name, a video's segments folder) never run at once; the second raises
    OutputBusy at once ("another run is writing X") instead of corrupting the first one's file.

    The lock is `flock` on ``.NAME.lock`` beside the target, removed when the body ends. A lock
    file that was removed between our open and our lock is a stale inode: we retry on the new one,
    so two runs can never both hold "the" lock. The kernel drops the lock when a process dies
    (kill -9 included), so a crashed run leaves no lock that blocks the next.
    """
    import fcntl

    path = lock_path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputBusy(f"{target}: another run is writing this output; try again when it has finished") from None
        except OSError:
            os.close(fd)
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed this lock file after we opened it: lock the new one
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def process_scratch_dir(prefix: str) -> Path:
    """A new temporary folder ``PREFIX<pid>-XXXX`` for this process, after removing the folders
    of that prefix whose process is gone (a SIGKILLed worker cannot clean up after itself; the
    next one on the machine does). Folders of live processes are left alone."""
    import shutil

    root = Path(tempfile.gettempdir())
    for folder in root.glob(f"{prefix}*"):
        pid_text = folder.name[len(prefix) :].split("-", 1)[0]
        if folder.is_dir() and pid_text.isdigit() and not _pid_alive(int(pid_text)):
            shutil.rmtree(folder, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-"))

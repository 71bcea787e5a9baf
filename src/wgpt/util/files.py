"""Files written so that a crash leaves the old version or the new one, never half of either:
temp + fsync + rename for a file, a whole directory replaced at once, and a lock file for work
that concurrent processes (a launch's ranks, nodes on a shared file system) must take turns at."""

from __future__ import annotations

import fcntl
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from wgpt.util.errors import WgptError


@contextmanager
def written_atomically(path: Path, durable: bool = False, private: bool = False) -> Iterator[Path]:
    """A temporary path beside ``path`` for the block to write; renamed over ``path`` when the
    block ends, removed when it raises: ``path`` is always the old file or the new one, whole.

    ``durable``: fsync the file before the rename and the directory after it, so a power cut
    keeps one whole file too (checkpoints). ``private``: a temporary name of this process's own,
    for files several processes may write at once."""
    tmp = path.with_name(f".{path.name}.tmp" + (f"-{os.getpid()}" if private else ""))
    try:
        yield tmp
        if durable:
            fsync(tmp)
        os.replace(tmp, path)
        if durable:
            fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def keep_copy(path: Path, copy: Path) -> None:
    """``copy`` becomes ``path``'s content as it is now (a hard link: no bytes copied, where the
    filesystem has them), atomically: ``copy`` is always the old one or the new one."""
    with written_atomically(copy) as tmp:
        try:
            os.link(path, tmp)
        except OSError:  # no hard links here
            shutil.copyfile(path, tmp)


def atomic_write_text(path: Path, text: str, durable: bool = False, private: bool = False) -> None:
    with written_atomically(path, durable, private) as tmp:
        tmp.write_text(text)


@contextmanager
def exclusive(lock_path: Path, new_dirs: list[Path]) -> Iterator[None]:
    """Hold an exclusive lock on ``lock_path``, and remove it when done: nothing stays behind. A
    waiter that gets the lock of a file removed meanwhile locks the new one instead, so two
    holders never overlap. Dirs it had to make are added to ``new_dirs`` (deepest first)."""
    while True:
        missing = [d for d in (lock_path.parent, *lock_path.parent.parents) if not d.exists()]
        try:
            lock_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise WgptError(
                f"cannot create {lock_path.parent} ({e.strerror}): give a directory you can write"
            ) from None
        new_dirs.extend(d for d in missing if d not in new_dirs)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # its dir was just removed by a failed preparer
            continue
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(lock_path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)  # before unlocking: a waiter then sees it gone and retries
        os.close(fd)


def try_lock(lock_path: Path) -> int | None:
    """An open descriptor of ``lock_path`` (created) holding its exclusive lock, or None when
    another process holds it. The lock lasts until ``release_lock`` or the end of this process,
    however it ends (a SIGKILL too); processes forked from this one (data loader workers) do not
    hold it, so it goes with this process at once."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    _held_locks.add(fd)
    return fd


def release_lock(fd: int) -> None:
    _held_locks.discard(fd)
    os.close(fd)


def _close_held_locks() -> None:
    # A forked child shares the parent's open file, and with it the lock, for as long as it lives.
    for fd in _held_locks:
        os.close(fd)
    _held_locks.clear()


_held_locks: set[int] = set()
os.register_at_fork(after_in_child=_close_held_locks)


class replaced_atomically:
    """Files written into a temporary directory beside ``out``, which then takes ``out``'s place
    whole: a kill midway leaves the old ``out`` (or none), never half an export. On an error the
    temporary directory, and the parent directories made for it, are removed again."""

    def __init__(self, out: Path):
        self.out = out
        self.made = [d for d in reversed(out.parents) if not d.exists()]  # shallowest first
        self.tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
        self.old = out.with_name(f".{out.name}.old-{os.getpid()}")

    def __enter__(self) -> Path:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, kind, error, traceback) -> None:
        if kind is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            for directory in reversed(self.made):
                try:
                    directory.rmdir()
                except OSError:
                    break
            return
        fsync_dir(self.tmp)
        if self.out.exists():
            os.replace(self.out, self.old)
        os.replace(self.tmp, self.out)
        fsync_dir(self.out.parent)
        shutil.rmtree(self.old, ignore_errors=True)


def fsync_dir(path: Path) -> None:
    """fsync a directory's files, then the directory (its entries)."""
    for file in [*path.iterdir(), path] if path.is_dir() else [path]:
        fsync(file)


def fsync(path: Path) -> None:
    """Flush a file's (or a directory's) data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

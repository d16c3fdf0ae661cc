"""One search per name: a search claims its name before it looks for a search of that name,
and holds the claim until its MLflow runs are closed.

The claim is an exclusive lock (`flock`) on `STORAGE/.ecgtune-locks/NAME.lock`, in the folder
the search writes its Ray experiment to, so searches on machines that share an NFS --storage
see one another (Linux NFS clients turn flock into NFS locks). Inside it the search checks
for Ray's experiment folder and opens or creates its MLflow parent run, so two
`ecgtune search --name X` started together cannot both pass the "already exists" check, and
a `--resume` of a running search is refused. The file says who holds the claim (host, pid,
start time), for that refusal. The kernel drops the lock when its process dies, however it
dies: the next search of that name takes a left-over claim over, and says so. (flock itself,
not the `filelock` package: the holder's name lives in the locked file, which filelock 3.x
truncates on every attempt to lock it.)

`--storage` as a URI (s3://...) has no folder to lock in. The claim is then taken beside a
SQLite tracking store (a SQLite store means one machine); with a tracking server nothing is
locked, which the search says in one line: start one search per name there.

A new SQLite store is created (its schema migrated) under a lock of its own beside it: two
searches that open a new store together would otherwise both migrate it, and one would fail.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecgtune.search.errors import SearchError

__all__ = ["LOCK_DIR", "Claim", "Holder", "claim_search", "holder_of", "lock_path",
           "open_tracking_store"]

LOCK_DIR = ".ecgtune-locks"
# File systems that cannot lock answer flock with one of these.
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
_OURS, _HELD, _UNLOCKABLE = "ours", "held", "unlockable"


@dataclass(frozen=True)
class Holder:
    """The process that holds (or last held) a search's claim."""

    host: str
    pid: int
    started: str  # local time, seconds

    @classmethod
    def me(cls) -> Holder:
        now = dt.datetime.now().astimezone().isoformat(sep=" ", timespec="seconds")
        return cls(socket.gethostname(), os.getpid(), now)

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}, started {self.started}"

    def alive(self) -> bool | None:
        """Whether the process still runs; None when it ran on another machine."""
        if self.host != socket.gethostname():
            return None
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process: it exists
            return True
        return True


@dataclass(frozen=True)
class Claim:
    """A held claim: its lock file (None: not locked) and a line to print, if any."""

    path: Path | None
    note: str | None = None


def lock_path(storage: str, name: str, tracking_uri: str) -> Path | None:
    """Where the claim on search `name` under `storage` is locked; None when nowhere."""
    if "://" not in storage or storage.startswith("file://"):
        return Path(storage.removeprefix("file://")) / LOCK_DIR / f"{name}.lock"
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        key = hashlib.sha256(storage.encode()).hexdigest()[:12]
        return db.parent / LOCK_DIR / f"{name}-{key}.lock"
    return None


@contextlib.contextmanager
def claim_search(storage: str, name: str, tracking_uri: str) -> Iterator[Claim]:
    """Hold the claim on search `name` for the duration; raises `SearchError` naming the
    process when another one holds it."""
    path = lock_path(storage, name, tracking_uri)
    if path is None:
        yield Claim(None, f"note: search names under {storage} are not locked with tracking "
                          f"server {tracking_uri}: run one search of {name!r} at a time")
        return
    with _locked(path, wait=False) as (fd, state):
        previous = _read_holder(fd)
        # Without locks the holder's pid is all there is; with them the lock decides (a
        # pid can be reused by an unrelated process once the search is gone).
        running = state == _HELD or (state == _UNLOCKABLE and previous is not None
                                     and previous.pid != os.getpid()
                                     and previous.alive() is not False)
        if running:
            if previous is None:  # locked, but its holder has not written its name yet
                raise SearchError(f"search {name!r} is being started by another process "
                                  f"(lock {path}); try again in a moment")
            raise SearchError(
                f"search {name!r} is already running ({previous.describe()}; lock {path}); "
                "wait for it to end, or stop it and continue it with --resume"
            )
        note = None
        if previous is not None:
            gone = ("that process is gone" if previous.alive() is False
                    else "it no longer holds the lock")
            note = (f"taking over the claim on search {name!r} left by {previous.describe()}: "
                    f"{gone}")
        _write_holder(fd, Holder.me())
        try:
            yield Claim(path, note)
        finally:
            # An empty file is a claim released on purpose; one left by a killed search
            # still names it, for the takeover line.
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)


def holder_of(storage: str, name: str, tracking_uri: str) -> tuple[Holder | None, bool | None]:
    """Who holds the claim on search `name` (None: nobody named in the lock file), and
    whether a process holds its lock now (None: not known: no lock there, or no locks)."""
    path = lock_path(storage, name, tracking_uri)
    if path is None or not path.is_file():
        return None, None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None, None
    try:
        holder = _read_holder(fd)
        try:
            # A shared lock is refused exactly while a search holds its exclusive one.
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return holder, True
        except OSError:
            return holder, None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return holder, False
    finally:
        os.close(fd)


def open_tracking_store(uri: str) -> Any:
    """An MLflow client of `uri`, a new SQLite store created under a lock beside it."""
    from ecgtune.search import tracking

    if not uri.startswith("sqlite:///"):
        return tracking.client(uri)
    db = Path(uri.removeprefix("sqlite:///"))
    with _locked(db.parent / LOCK_DIR / f"{db.name}.lock", wait=True):
        client = tracking.client(uri)
        client.search_experiments(max_results=1)  # creates and migrates the store now
    return client


@contextlib.contextmanager
def _locked(path: Path, wait: bool) -> Iterator[tuple[int, str]]:
    """Open and flock `path`; yields (fd, _OURS | _HELD | _UNLOCKABLE). `_HELD` only without
    `wait`; `_UNLOCKABLE`: a file system without locks (logged once per call)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            state = _OURS
        except BlockingIOError:
            state = _HELD
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                raise
            logging.getLogger(__name__).warning(
                "%s: this file system cannot lock files; only the process named in it guards "
                "the search name", path)
            state = _UNLOCKABLE
        yield fd, state
    finally:
        os.close(fd)  # releases the lock


def _read_holder(fd: int) -> Holder | None:
    os.lseek(fd, 0, os.SEEK_SET)
    data = b""
    while chunk := os.read(fd, 4096):
        data += chunk
    try:
        fields = json.loads(data)
        return Holder(str(fields["host"]), int(fields["pid"]), str(fields["started"]))
    except (ValueError, KeyError, TypeError):
        return None  # empty (released) or not ours


def _write_holder(fd: int, holder: Holder) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, json.dumps(holder.__dict__).encode() + b"\n")
    os.fsync(fd)

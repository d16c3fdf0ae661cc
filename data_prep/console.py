"""What every `ecgtune` command shares as a process: SIGTERM ends it the way Ctrl-C does, and
an OS error of the file system it writes to is one line naming the path.

SIGTERM (`timeout`, a batch scheduler, `kill`) is passed to whatever handles Ctrl-C at that
moment: during a search that is Ray Tune's handler, which stops the trials and saves the
experiment state for `--resume`; elsewhere Python's, so `Terminated` (a KeyboardInterrupt)
unwinds through the same cleanup as Ctrl-C. The command then exits with 143 (128 + SIGTERM)
instead of Ctrl-C's 130.

A read-only file system, a missing permission, a full disk or a quota ends a command with
`cannot write PATH: no space left on device (this step needs about 3.4 GB; 0.2 GB free)`:
the path from the error, or the command's own output when the system call did not name one
(a full disk fails a `write`, which carries no file name); the size from `expect_disk_use`,
which a step calls once it knows how much it will write.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_TERMINATED",
    "Terminated",
    "expect_disk_use",
    "handle_sigterm",
    "keep_sigterm_handler",
    "os_error_line",
    "sigterm_as_interrupt",
    "terminated",
]

EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143

# The file-system conditions a user fixes outside ecgtune (another folder, more space, a
# permission), in the words the line uses.
_FILE_SYSTEM_ERRORS = {
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
}
_SPACE_ERRORS = (errno.ENOSPC, errno.EDQUOT)
# pyarrow (Parquet, Ray's storage) raises OSError with the errno and path in its message only.
_ERRNO_IN_TEXT = re.compile(r"\[errno (\d+)\]", re.IGNORECASE)
_PATH_IN_TEXT = re.compile(r"'(/[^']+)'")


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C raises KeyboardInterrupt, so every cleanup written for
    Ctrl-C (runs ended KILLED, temporary files removed) runs for it too."""


_received: list[int] = []
_disk_use: dict[str, float] = {}


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _received.append(signum)
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler) and handler is not signal.default_int_handler:
        handler(signal.SIGINT, frame)  # e.g. Ray Tune's: stop the trials, save the state
        return
    raise Terminated(f"signal {signum}")


def handle_sigterm() -> None:
    """Route SIGTERM to the Ctrl-C path. `ray.init` replaces the handler with its own (exit
    at once) and Ray's native one that prints a C stack dump: see `keep_sigterm_handler`."""
    if threading.current_thread() is threading.main_thread():  # Python allows no other
        signal.signal(signal.SIGTERM, _on_sigterm)


@contextmanager
def keep_sigterm_handler() -> Iterator[None]:
    """Put the SIGTERM handling of `sigterm_as_interrupt` back after a call that replaces it
    (`ray.init`); outside it (a library caller) that call's own handling stays."""
    ours = signal.getsignal(signal.SIGTERM) is _on_sigterm
    yield
    if ours:
        handle_sigterm()


def terminated() -> bool:
    """Whether SIGTERM arrived since `sigterm_as_interrupt` began."""
    return bool(_received)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM handled like Ctrl-C for the duration (the console script wraps each command);
    the previous handler comes back afterwards, for in-process callers such as the tests."""
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if on_main else None
    _received.clear()
    _disk_use.clear()
    handle_sigterm()
    try:
        yield
    finally:
        if on_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def expect_disk_use(nbytes: float, path: str | os.PathLike[str]) -> None:
    """Record roughly how many bytes the running step writes under `path`, for the line a
    full disk ends it with."""
    _disk_use.clear()
    _disk_use[str(path)] = float(nbytes)


def _file_system_error(exc: BaseException) -> OSError | None:
    """The OSError of a file-system condition in `exc` or its causes, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and _errno(current) in _FILE_SYSTEM_ERRORS:
            return current
        current = current.__cause__ or current.__context__
    return None


def _errno(exc: OSError) -> int | None:
    if exc.errno is not None:
        return exc.errno
    found = _ERRNO_IN_TEXT.search(str(exc))
    return int(found.group(1)) if found else None


def _path(exc: OSError) -> str | None:
    if exc.filename is not None:
        return os.fsdecode(exc.filename)
    found = _PATH_IN_TEXT.search(str(exc))
    return found.group(1) if found else None


def os_error_line(exc: BaseException, output: str | os.PathLike[str] | None = None) -> str | None:
    """The one line for a file-system error in `exc` (or beneath it); None for any other
    error. `output` (the command's --output or --storage) names where it failed when the
    error names no file."""
    error = _file_system_error(exc)
    if error is None:
        return None
    code = _errno(error)
    assert code is not None
    path = _path(error)
    where = f" {path}" if path else (f" {output}" if output else "")
    verb = "access" if code in (errno.EACCES, errno.EPERM) else "write"
    line = f"cannot {verb}{where}: {_FILE_SYSTEM_ERRORS[code]}"
    if code in _SPACE_ERRORS:
        line += _space_hint(path or (str(output) if output else None))
    return line


def _space_hint(path: str | None) -> str:
    parts = []
    for target, nbytes in _disk_use.items():
        parts.append(f"this step needs about {_gigabytes(nbytes)} under {target}")
    free = _free_bytes(path)
    if free is not None:
        parts.append(f"{_gigabytes(free)} free there now")
    return f" ({'; '.join(parts)})" if parts else ""


def _free_bytes(path: str | None) -> int | None:
    if not path:
        return None
    existing = Path(path)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        return shutil.disk_usage(existing).free
    except OSError:
        return None


def _gigabytes(nbytes: float) -> str:
    return f"{nbytes / 1e6:.0f} MB" if nbytes < 1e8 else f"{nbytes / 1e9:.1f} GB"

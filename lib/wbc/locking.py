"""One writer per output folder: an advisory lock file beside the folder.

Every stage that writes a folder (``preprocess``, ``split``, ``train --out``, ``evaluate`` on a
run folder) holds ``FolderLock(folder)`` while it writes. The lock is ``.<folder name>.lock``
*beside* the folder (a folder replaced as a unit keeps its lock), holding JSON that names the
holder (stage, PID, host, start time). It is locked with ``flock``, which the kernel releases
when its process dies however it dies: a second writer gets a ``WbcError`` naming the holder,
and a lock file left by a dead process is taken over (and reported). Where ``flock`` is not
available the holder's PID is checked instead (same host only). The lock guards against a
second ``wbc`` command, not against other programs.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import threading
import types
from pathlib import Path

from wbc.errors import WbcError

fcntl: types.ModuleType | None
try:  # POSIX
    import fcntl as _fcntl

    fcntl = _fcntl
except ImportError:  # pragma: no cover - Windows: PID check only
    fcntl = None

LOCK_SUFFIX = ".lock"

# Locks this process holds: {lock path: (thread id, FolderLock)}; a thread may re-enter its own.
_HELD: dict[str, tuple[int, FolderLock]] = {}
_HELD_GUARD = threading.Lock()


def lock_path(folder: str | os.PathLike) -> Path:
    """The lock file of ``folder``: ``<parent>/.<name>.lock`` (the parent's symbolic links
    resolved, so every spelling of one folder gives one lock file)."""
    folder = Path(os.path.abspath(folder))
    return Path(os.path.realpath(folder.parent)) / f".{folder.name}{LOCK_SUFFIX}"


def pid_alive(pid: int) -> bool:
    """True when a process with this PID runs on this host (a zombie, dead but not yet reaped,
    does not count)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    except OSError:
        return False
    try:  # Linux: the state letter follows the command name in parentheses
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        return state not in (b"Z", b"X")
    except (OSError, IndexError):
        return True


def read_holder(path: str | os.PathLike) -> dict | None:
    """The holder recorded in a lock file (``stage, pid, host, started``), None when unreadable."""
    try:
        text = Path(path).read_text(encoding="utf-8")
        holder = json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def describe_holder(holder: dict | None) -> str:
    """``"preprocess (PID 123 on host lab1, started 2024-05-01T10:00:00)"``."""
    if not holder:
        return "another process (it has not written its details yet)"
    return (
        f"{holder.get('stage', 'a wbc command')} (PID {holder.get('pid', '?')} on host "
        f"{holder.get('host', '?')}, started {holder.get('started', '?')})"
    )


class FolderLock:
    """Advisory lock on an output folder; use as a context manager.

    ``FolderLock(folder, "preprocess")`` raises ``WbcError`` on entry when another live process
    holds the folder, naming it. ``stale`` is the record of a dead holder that was taken over
    (also logged as a warning), else None.
    """

    def __init__(self, folder: str | os.PathLike, stage: str = "wbc"):
        self.folder = Path(os.path.abspath(folder))
        self.path = lock_path(self.folder)
        self.stage = stage
        self.stale: dict | None = None
        self._fd: int | None = None
        self._depth = 0

    def _record(self) -> dict:
        return {
            "stage": self.stage,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
            "folder": str(self.folder),
        }

    def _busy(self, holder: dict | None) -> WbcError:
        return WbcError(
            f"{self.folder} is being written by {describe_holder(holder)}; only one command may "
            f"write a folder at a time. Wait for it to finish, or choose another output folder. "
            f"(Lock file: {self.path}; if that process really is gone, delete the lock file.)"
        )

    def acquire(self) -> FolderLock:
        """Take the lock (or raise WbcError naming the holder); returns self."""
        key = str(self.path)
        me = threading.get_ident()
        with _HELD_GUARD:
            held = _HELD.get(key)
            if held is not None:
                if held[0] != me:
                    raise self._busy(read_holder(self.path))
                held[1]._depth += 1  # the same thread again (a stage calling another)
                self._shared = held[1]
                return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(50):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                state = self._flock(fd)
                if state is False:
                    raise self._busy(read_holder(self.path))
                try:
                    same_file = os.stat(self.path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same_file = False
                if not same_file:  # the previous holder removed it as we opened it: again
                    os.close(fd)
                    continue
                previous = read_holder(self.path)
                mine = previous and previous.get("pid") == os.getpid() and previous.get("host") == socket.gethostname()
                if state is None and previous and not mine and self._holder_may_live(previous):
                    raise self._busy(previous)
                data = (json.dumps(self._record(), sort_keys=True) + "\n").encode()
                os.ftruncate(fd, 0)
                os.pwrite(fd, data, 0)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            self._depth = 1
            self._shared = self
            with _HELD_GUARD:
                _HELD[key] = (me, self)
            if previous and not mine:
                self.stale = previous
                logging.getLogger(__name__).warning(
                    f"note: {self.folder}: took over a stale lock left by {describe_holder(previous)}; that "
                    "process is no longer running (killed or crashed). Finished work in the folder is kept."
                )
            return self
        raise WbcError(f"{self.path}: could not take the lock (it keeps being replaced); try again")

    @staticmethod
    def _flock(fd: int) -> bool | None:
        """True: locked; False: another process holds it; None: flock not available here."""
        if fcntl is None:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError:  # e.g. ENOLCK on some network file systems: fall back to the PID
            return None

    @staticmethod
    def _holder_may_live(holder: dict) -> bool:
        """Without flock: a holder on this host is alive when its PID is; another host's may be."""
        if holder.get("host") != socket.gethostname():
            return True
        try:
            return pid_alive(int(holder.get("pid", 0)))
        except (TypeError, ValueError):
            return False

    def release(self) -> None:
        """Give the lock back: the lock file is removed, then unlocked."""
        owner = getattr(self, "_shared", self)
        if owner is not self:  # a re-entry: the outer holder releases
            owner._depth -= 1
            self._shared = self
            return
        if self._fd is None:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        with _HELD_GUARD:
            _HELD.pop(str(self.path), None)
        try:
            if os.stat(self.path).st_ino == os.fstat(self._fd).st_ino:
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

"""Owner locks: one writer per node at a time, and stale locks recognised as such."""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
from dataclasses import asdict, dataclass, field

import psutil

from .errors import LockHeldError
from .layout import LOCK
from .manifest import now_iso
from .storage import Location

log = logging.getLogger(__name__)


def _process_start(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


@dataclass(frozen=True)
class LockInfo:
    """Who holds a node: host, process id and that process's start time."""

    host: str
    pid: int
    started: float | None
    acquired: str = field(default_factory=now_iso)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @classmethod
    def mine(cls) -> LockInfo:
        """A lock record for the calling process."""
        pid = os.getpid()
        return cls(socket.gethostname(), pid, _process_start(pid))

    def is_mine(self) -> bool:
        """Whether the calling process holds this lock."""
        me = LockInfo.mine()
        return (self.host, self.pid, self.started) == (me.host, me.pid, me.started)

    def is_stale(self) -> bool:
        """True when the holder is known to be gone (same host, process dead or pid reused).

        Locks held on another host are never called stale: their process cannot be checked.
        """
        if self.host != socket.gethostname():
            return False
        started = _process_start(self.pid)
        return started is None or (self.started is not None and abs(started - self.started) > 1)

    def describe(self) -> str:
        """Human-readable holder description."""
        return f"pid {self.pid} on {self.host} (since {self.acquired})"


def lock_location(node: Location) -> Location:
    """Where the lock file of ``node`` lives."""
    return node.raw_child(LOCK)


def read_lock(node: Location) -> LockInfo | None:
    """The current lock of ``node``, or None. An unreadable lock file counts as stale."""
    loc = lock_location(node)
    try:
        raw = loc.fs.cat_file(loc.path)
    except FileNotFoundError:
        return None
    try:
        return LockInfo(**json.loads(raw))
    except (ValueError, TypeError):
        return LockInfo(host=socket.gethostname(), pid=-1, started=None, acquired="?", token="?")


def _create_exclusive(loc: Location, data: bytes) -> bool:
    """Create the file only if absent. Returns False when it already exists."""
    try:
        if loc.is_local:
            fd = os.open(loc.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
        else:
            loc.fs.pipe_file(loc.path, data, mode="create")
    except FileExistsError:
        return False
    return True


def acquire_lock(node: Location, *, break_stale: bool = True) -> LockInfo:
    """Take the owner lock of ``node``; re-entrant for the same process.

    Raises
    ------
    LockHeldError
        If a live process (or one on another host) holds it.
    """
    mine = LockInfo.mine()
    loc = lock_location(node)
    for _ in range(3):
        if _create_exclusive(loc, json.dumps(asdict(mine)).encode()):
            return mine
        held = read_lock(node)
        if held is None:
            continue  # released in between: try again
        if held.is_mine():
            return held
        if held.is_stale() and break_stale:
            log.warning("breaking stale lock of %s held by %s", node.url, held.describe())
            loc.remove()
            continue
        raise LockHeldError(
            f"node {node.url} is being written by {held.describe()}; wait for it to finish, "
            "or if that process is gone run `cachetree unlock` on the node"
        )
    raise LockHeldError(f"could not take the lock of {node.url}: it keeps changing hands")


def release_lock(node: Location) -> None:
    """Remove the lock if the calling process holds it (a lock of someone else is kept)."""
    held = read_lock(node)
    if held is not None and held.is_mine():
        lock_location(node).remove()


def break_lock(node: Location) -> LockInfo | None:
    """Remove any lock of ``node`` unconditionally and return what it said."""
    held = read_lock(node)
    lock_location(node).remove()
    return held

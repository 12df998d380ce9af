"""Owner locks: one process at a time changes a node, and dead holders are recognised.

A lock file records who holds the node: host, process id, that process's start time and
what for (``write`` while a pipeline writes the node, ``clean`` while clean deletes inside
it). It is created in one atomic step, so it is never seen half written: locally a
complete temporary file is hard-linked to the lock's name (the link fails if the lock
exists), on object stores a single conditional put creates it.

A writer that finds a node claimed by a running clean waits for it; a writer that finds
the node's directory removed under it (clean deleting a leftover) recreates it and tries
again. So clean never makes a writer fail.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Literal

import psutil

from ..errors import CorruptRecordError, LockHeldError, NodeNotFoundError
from ..fs.location import Location, cat_whole, storage_error, storage_errors, temp_name
from ..fs.records import Field, is_iso_time, parse_record
from .layout import LOCK
from .manifest import now_iso

__all__ = [
    "CLEAN_WAIT",
    "LockInfo",
    "acquire_lock",
    "break_lock",
    "lock_location",
    "parse_lock",
    "read_lock",
    "release_lock",
]

log = logging.getLogger(__name__)

Purpose = Literal["write", "clean"]

CLEAN_WAIT = 120.0
"""Seconds a writer waits for a running clean to release a node before giving up."""

_POLL = 0.02


def _process_start(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


@dataclass(frozen=True)
class LockInfo:
    """Who holds a node: host, process id, that process's start time, and what for.

    Attributes
    ----------
    error
        Set when the lock file could not be read: such a lock holds nothing and counts
        as stale.
    """

    host: str
    pid: int
    started: float | None
    acquired: str = field(default_factory=now_iso)
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    purpose: Purpose = "write"
    error: str | None = None

    @classmethod
    def mine(cls, purpose: Purpose = "write") -> LockInfo:
        """A lock record for the calling process."""
        pid = os.getpid()
        return cls(socket.gethostname(), pid, _process_start(pid), purpose=purpose)

    def is_mine(self) -> bool:
        """Whether the calling process holds this lock."""
        if self.error is not None:
            return False
        me = LockInfo.mine()
        return (self.host, self.pid, self.started) == (me.host, me.pid, me.started)

    def is_stale(self) -> bool:
        """True when the holder is known to be gone (same host, process dead or pid reused).

        An unreadable lock is stale. Locks held on another host are never called stale here:
        their process cannot be checked (see :meth:`age` for a grace period).
        """
        if self.error is not None:
            return True
        if self.host != socket.gethostname():
            return False
        started = _process_start(self.pid)
        return started is None or (self.started is not None and abs(started - self.started) > 1)

    def age(self) -> float:
        """Seconds since the lock was taken (0 when unknown)."""
        try:
            return max(0.0, time.time() - datetime.fromisoformat(self.acquired).timestamp())
        except ValueError:
            return 0.0

    def describe(self) -> str:
        """Human-readable holder description."""
        if self.error is not None:
            return f"nobody (unreadable lock: {self.error})"
        what = "cleaned" if self.purpose == "clean" else "written"
        return f"{what} by pid {self.pid} on {self.host} (since {self.acquired})"

    def to_json(self) -> bytes:
        """The lock file's contents."""
        record = asdict(self)
        del record["error"]
        return json.dumps(record).encode()


_FIELDS = {
    "host": Field(str, required=True, check=bool, expect="a non-empty host name"),
    "pid": Field(int, required=True, check=lambda v: v > 0, expect="a positive integer"),
    "started": Field((int, float, type(None))),
    "acquired": Field(str, check=is_iso_time, expect="an ISO 8601 time"),
    "token": Field(str),
    "purpose": Field(str, check=lambda v: v in ("write", "clean"), expect="'write' or 'clean'"),
}


def parse_lock(raw: bytes | None, *, where: str) -> LockInfo:
    """A lock record from a lock file's contents; unreadable ones have ``error`` set."""
    try:
        rec = parse_record(raw, _FIELDS, where=where, remedy="it is ignored (counts as stale)")
    except CorruptRecordError as exc:
        return LockInfo(host="?", pid=0, started=None, acquired="?", token="?", error=str(exc))
    known = {k: rec[k] for k in _FIELDS if k in rec}
    return LockInfo(**known)


def lock_location(node: Location) -> Location:
    """Where the lock file of ``node`` lives."""
    return node.raw_child(LOCK)


def read_lock(node: Location) -> LockInfo | None:
    """The current lock of ``node``, or None. An unreadable lock file has ``error`` set."""
    loc = lock_location(node)
    try:
        raw = cat_whole(loc.fs, loc.path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except IsADirectoryError:
        raw = None
    return parse_lock(raw, where=f"lock file {loc.url}")


def _create_exclusive(loc: Location, data: bytes) -> bool:
    """Create the file complete, only if absent. Returns False when it already exists.

    Raises FileNotFoundError when the directory is missing.
    """
    if not loc.is_local:
        try:
            loc.fs.pipe_file(loc.path, data, mode="create")
        except FileExistsError:
            return False
        return True
    tmp = temp_name(loc.path)
    with open(tmp, "xb") as fh:
        try:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        except BaseException:
            os.unlink(tmp)
            raise
    try:
        os.link(tmp, loc.path)
    except FileExistsError:
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return True


def acquire_lock(
    node: Location,
    *,
    purpose: Purpose = "write",
    break_stale: bool = True,
    create_dirs: bool = True,
) -> LockInfo:
    """Take the owner lock of ``node``.

    A writer's lock is re-entrant for the same process. A writer that finds the node
    claimed by a running clean waits for it (up to :data:`CLEAN_WAIT` seconds) and recreates
    the node's directory if clean removed it. A clean claim is never re-entrant and never
    waits: any live holder makes it fail.

    Parameters
    ----------
    node
        The node directory.
    purpose
        ``"write"`` or ``"clean"``.
    break_stale
        Remove a lock whose holder is gone (or that cannot be read) and take it.
    create_dirs
        Create the node directory when missing; when False a missing directory raises
        :class:`FileNotFoundError`.

    Raises
    ------
    LockHeldError
        If a live process (or one on another host) holds it.
    StorageError
        If the lock file cannot be written (disk full, permission denied, read-only).
    """
    mine = LockInfo.mine(purpose)
    data = mine.to_json()
    loc = lock_location(node)
    deadline = time.monotonic() + CLEAN_WAIT
    while time.monotonic() < deadline:
        try:
            if create_dirs:
                node.makedirs()
            if _create_exclusive(loc, data):
                return mine
        except FileNotFoundError:
            if not create_dirs:
                raise NodeNotFoundError(f"no node directory at {node.url}") from None
            continue  # the directory was removed in between: make it again
        except OSError as exc:
            raise storage_error(loc, exc) from exc
        held = read_lock(node)
        if held is None:
            continue  # released in between: try again
        if purpose == "write" and held.is_mine() and held.purpose == "write":
            return held
        if held.is_stale() and break_stale:
            log.warning("breaking stale lock of %s, %s", node.url, held.describe())
            with storage_errors(loc):
                loc.remove()
            continue
        if purpose == "write" and held.purpose == "clean" and not held.is_mine():
            time.sleep(_POLL)  # clean is deleting leftovers here: wait until it is done
            continue
        raise LockHeldError(
            f"node {node.url} is being {held.describe()}; wait for it to finish, "
            "or if that process is gone run `cachetree unlock` on the node"
        )
    raise LockHeldError(f"could not take the lock of {node.url} within {CLEAN_WAIT:.0f} s")


def release_lock(node: Location, held: LockInfo | None = None) -> None:
    """Remove the lock if the calling process holds it (a lock of someone else is kept).

    With ``held`` given, only that very lock (same token) is removed.
    """
    current = read_lock(node)
    if current is None or not current.is_mine():
        return
    if held is not None and current.token != held.token:
        return
    with storage_errors(lock_location(node)):
        lock_location(node).remove()


def break_lock(node: Location) -> LockInfo | None:
    """Remove any lock of ``node`` unconditionally and return what it said."""
    held = read_lock(node)
    lock_location(node).remove()
    return held

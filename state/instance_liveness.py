"""Which server instances sharing the state database are alive, so that background responses left unfinished by
a stopped instance are failed and those a live instance is still generating are not.

Each instance writes a heartbeat row (host, pid, time) when it starts and then periodically. An instance is dead
when its heartbeat is older than STALE_SECONDS, or at once when it ran on this host and its process is gone (a
server killed and restarted here fails its old rows at start, without waiting for the heartbeat to go stale).
"""

from __future__ import annotations

import os
import socket
import time
import uuid

from state.database import StateDatabase

HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 60.0  # six missed heartbeats: the instance is gone (or cut off from the database)


class Liveness:
    def __init__(self, db: StateDatabase) -> None:
        self.db = db
        self.instance = uuid.uuid4().hex
        self.host = socket.gethostname()

    def beat(self) -> None:
        self.db.change("INSERT INTO instances (id, host, pid, heartbeat) VALUES (?, ?, ?, ?) "
                       "ON CONFLICT (id) DO UPDATE SET heartbeat = excluded.heartbeat",
                       (self.instance, self.host, os.getpid(), time.time()))

    def alive(self) -> set[str]:
        """The instances alive now (this one always)."""
        rows = self.db.query("SELECT id, host, pid, heartbeat FROM instances")
        now = time.time()
        live = {self.instance}  # an earlier instance with our pid (reused) is not us: it is gone
        for instance, host, pid, heartbeat in rows:
            same_host = host == self.host
            if now - heartbeat <= STALE_SECONDS and (not same_host or (pid != os.getpid() and _process_exists(pid))):
                live.add(instance)
        self.db.change("DELETE FROM instances WHERE heartbeat < ?", (now - 24 * 3600,))  # long gone: tidy up
        return live

    def leave(self) -> None:
        """A clean stop: this instance's rows are no longer anyone's."""
        try:
            self.db.change("DELETE FROM instances WHERE id = ?", (self.instance,))
        except Exception:  # the database went away first: the heartbeat goes stale instead
            pass


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True

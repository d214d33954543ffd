"""What travels between the server and an engine worker: pickled messages, each framed by its length, over a
local socket pair only the two processes hold.

Messages are tuples whose first item names them (see `backends/worker/child.py` and `backends/worker/engine.py`).
Exceptions cross as their class's import path, arguments and attributes, so a typed error raised in the worker
(`ContextLengthExceeded` with its `param`) is the same typed error in the server.
"""

from __future__ import annotations

import importlib
import pickle
import socket
import struct
import threading

_LENGTH = struct.Struct("!I")


class WorkerGone(ConnectionError):
    """The other end closed its socket (the worker exited or was killed)."""


class Channel:
    """One end of the socket pair: whole messages in, whole messages out. Sends may come from several threads;
    receiving is one thread's job."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()

    def send(self, message: tuple) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        try:
            with self._send_lock:
                self.sock.sendall(_LENGTH.pack(len(data)) + data)
        except OSError as exc:
            raise WorkerGone(str(exc)) from exc

    def receive(self) -> tuple:
        (length,) = _LENGTH.unpack(self._read_exactly(_LENGTH.size))
        return pickle.loads(self._read_exactly(length))

    def _read_exactly(self, size: int) -> bytes:
        chunks, needed = [], size
        while needed:
            try:
                chunk = self.sock.recv(min(needed, 1 << 20))
            except OSError as exc:
                raise WorkerGone(str(exc)) from exc
            if not chunk:
                raise WorkerGone("the other end closed the connection")
            chunks.append(chunk)
            needed -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def shut_down(self) -> None:
        """End both directions now: a receive blocked in another thread returns (the other end is gone)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def encode_error(exc: BaseException) -> tuple:
    cls = type(exc)
    return cls.__module__, cls.__qualname__, exc.args, dict(getattr(exc, "__dict__", {}))


def decode_error(encoded: tuple) -> Exception:
    """The exception the worker raised, rebuilt without calling its constructor (whose signature may differ from
    its `args`); one whose class cannot be imported here becomes a RuntimeError naming it."""
    module, qualname, args, attributes = encoded
    try:
        cls = importlib.import_module(module)
        for part in qualname.split("."):
            cls = getattr(cls, part)
        if not (isinstance(cls, type) and issubclass(cls, Exception)):
            raise TypeError(qualname)
        exc = cls.__new__(cls)
        Exception.__init__(exc, *args)
        exc.__dict__.update(attributes)
        return exc
    except Exception:
        return RuntimeError(f"{qualname}: {args[0] if args else ''}")

"""A dense shard's worker process, spoken to by the front directly: MMS's Python worker without MMS's Java front.

MMS runs a model in a Python worker that its Java front feeds over a unix socket, in MMS's own binary protocol
(``mms.protocol.otf_message_handler``): a load message (``L``) once, then inference messages (``I``), each a batch
of requests, each answered in order. For dense shards the front speaks that protocol itself (see
``openmme.endpoint.shardworker``), which saves the Java hop on every warm request. What runs here is MMS's own
worker code: its codec reads the messages, ``ModelLoaderFactory`` loads the shard's handler (``dense_service``)
and ``Service.predict`` answers each batch, exactly as in a worker the Java front started.

What differs from ``mms/model_service_worker.py`` is only the plumbing around it: the front hands this process
one end of a socket pair (``--fd``) instead of a socket path to listen on, so there is no fork per connection;
its stdout and stderr go where the front points them (no log FIFOs); sockets are read through a buffer (MMS
reads every field with its own ``recv``); and the process dies with the front (``PR_SET_PDEATHSIG``) or when the
front closes its end. Unlike an isolated model's worker it is not a subreaper (``openmme.handlers._lifetime``): it
would have to reap what it adopts in a process that runs model code (a pickled booster's, with
``--allow-pickle``), whose own child processes' exit statuses must not be taken from it; a booster needs no helper
process, so one that leaves the shard goes to ``openmme serve``'s supervisor and is killed at once.

With ``--listen PATH`` the worker also accepts connections on a unix socket at PATH, from the endpoint's other
front processes (its *edges*), which send predictions to the shard without a hop through the front that started
it. The socket listens from the start, before the load message is read, so an edge that connects never races
the worker's start-up. Each edge connection has a thread of its own and carries inference messages only:
loading is the front's alone, on its own end, and a load message on an edge's connection closes that
connection. An inference message on any connection before the shard is loaded closes that connection too (the
edge tries another shard; the front's closing ends the worker). One lock serialises the loads and predictions,
so the worker still answers one message at a time, as MMS's does, whichever connection brought it; each answer
goes back on the connection its message came from. The front's end remains the worker's lifetime: when the
front closes it, the worker removes its socket file and exits, and its edges' connections close with it.

    python -m openmme.handlers._shard_worker --fd N --model-name openmme-shard-0 --front-pid PID [--listen PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import socket
import sys
import threading
import time
from typing import Any, BinaryIO

from openmme.handlers._lifetime import die_with_parent

__all__ = ["main"]

logger = logging.getLogger(__name__)


class _BufferedSocket:
    """The ``recv`` MMS's codec reads with, served from a buffered reader: a few system calls per message instead
    of one per field."""

    def __init__(self, reader: BinaryIO) -> None:
        self._reader = reader

    def recv(self, length: int) -> bytes:
        return self._reader.read(length) or b""  # b"": the peer closed its end (the codec's "disconnected")


class _Shard:
    """The shard's MMS service once the front loaded it, and the lock that has the worker answer one message at a
    time whichever connection brought it."""

    def __init__(self) -> None:
        self.service: Any = None
        self.lock = threading.Lock()

    def load(self, message: dict[str, Any]) -> tuple[bytes, bool]:
        """Load the shard's handler as MMS's worker does; returns the load reply and whether it loaded."""
        from mms.model_loader import ModelLoaderFactory
        from mms.protocol.otf_message_handler import create_load_model_response

        model_dir = message["modelPath"].decode()
        name, handler = message["modelName"].decode(), message["handler"].decode()
        try:
            with self.lock:
                loader = ModelLoaderFactory.get_model_loader(model_dir)
                self.service = loader.load(name, model_dir, handler, None, int(message.get("batchSize", 1)))
        except Exception as exc:  # the front answers its callers; this worker is ended
            logger.exception("dense shard %s could not load", name)
            return create_load_model_response(500, f"{type(exc).__name__}: {exc}"), False
        return create_load_model_response(200, f"loaded model {name}. [PID]:{os.getpid()}"), True


def serve(connection: socket.socket, shard: _Shard, *, front: bool) -> None:
    """Answer the messages on ``connection`` until its peer closes it: the front's (the load, then predictions)
    or an edge's (predictions only)."""
    from mms.protocol.otf_message_handler import retrieve_msg

    with connection.makefile("rb") as file:  # closed with it: the socket's descriptor is then released
        reader = _BufferedSocket(file)
        while True:
            try:
                command, message = retrieve_msg(reader)
            except ValueError:  # the peer closed the socket (or sent something that is not the protocol)
                return
            if command == b"I":
                with shard.lock:
                    reply = None if shard.service is None else shard.service.predict(message)
                if reply is None:
                    logger.warning("an inference message before the shard was loaded: closing its connection")
                    return
                connection.sendall(reply)
            elif not front:
                logger.warning("a load message on an edge's connection: closing it (loading is the front's)")
                return
            else:
                reply, loaded = shard.load(message)
                connection.sendall(reply)
                if not loaded:
                    return


class _Listener:
    """The unix socket edges connect to, and the thread that accepts them: one thread more per connection."""

    def __init__(self, path: str, shard: _Shard) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a worker before this one, killed, left it (as MMS's worker, replaced)
        self._path, self._shard = path, shard
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket.bind(path)
        self._identity = _identity(path)
        self._socket.listen(128)
        threading.Thread(target=self._accept, name="edges", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError as exc:
                if self._socket.fileno() == -1:  # closed: the worker is exiting
                    return
                logger.warning("could not accept an edge's connection (%s)", exc)
                time.sleep(0.1)  # out of descriptors, say: not a busy loop
                continue
            threading.Thread(target=self._serve, args=(connection,), name="edge", daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            try:
                serve(connection, self._shard, front=False)
            except OSError:  # the edge went away mid-answer: only its connection ends
                pass
            except Exception:
                logger.exception("an edge's connection failed; closing it")

    def close(self) -> None:
        """Stop listening and remove the socket file, unless a newer worker has bound that path since."""
        if _identity(self._path) == self._identity:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._path)
        self._socket.close()


def _identity(path: str) -> tuple[int, int] | None:
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    return status.st_dev, status.st_ino


def main(argv: list[str] | None = None) -> None:
    """Serve the front's end until it closes it, then end the process (``os._exit``)."""
    parser = argparse.ArgumentParser(prog="openmme.handlers._shard_worker")
    parser.add_argument("--fd", type=int, required=True, help="this process's end of the front's socket pair")
    parser.add_argument("--model-name", required=True, help="the shard's name (how tests and ps find it)")
    parser.add_argument("--front-pid", type=int, required=True, help="the front that started this worker")
    parser.add_argument(
        "--listen",
        metavar="PATH",
        help="also accept edges' connections (inference messages only) on a unix socket at this path, at most 107 "
        "bytes, in a directory private to the endpoint; a file already there is replaced, and removed at exit",
    )
    args = parser.parse_args(argv)
    front = args.front_pid
    die_with_parent(lambda pid: pid == front)
    # As MMS's worker does: one OpenMP thread per worker, the workers being the parallelism.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.basicConfig(stream=sys.stdout, format="%(asctime)s %(name)s %(levelname)s %(message)s", level=logging.INFO)
    shard = _Shard()
    connection = socket.socket(fileno=args.fd)
    status = 0
    try:
        listener = _Listener(args.listen, shard) if args.listen else None
        try:
            serve(connection, shard, front=True)
        finally:
            if listener is not None:
                listener.close()
    except Exception:
        logger.exception("dense shard %s's worker failed", args.model_name)
        status = 1
    finally:
        connection.close()
    # Edges' threads may be inside the handler right now: end the process without tearing the interpreter and
    # the native libraries down under them.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    main()

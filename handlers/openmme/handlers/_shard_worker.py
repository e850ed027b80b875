"""A dense shard's worker process, spoken to by the front directly: MMS's Python worker without MMS's Java front.

MMS runs a model in a Python worker that its Java front feeds over a unix socket, in MMS's own binary protocol
(``mms.protocol.otf_message_handler``): a load message (``L``) once, then inference messages (``I``), each a batch
of requests, each answered in order. For dense shards the front speaks that protocol itself (see
``openmme.endpoint.shardworker``), which saves the Java hop on every warm request. What runs here is MMS's own
worker code: its codec reads the messages, ``ModelLoaderFactory`` loads the shard's handler (``dense_service``)
and ``Service.predict`` answers each batch, exactly as in a worker the Java front started.

What differs from ``mms/model_service_worker.py`` is only the plumbing around it: the front hands this process
one end of a socket pair (``--fd``) instead of a socket path to listen on, so there is no listener, no fork per
connection and no socket file; its stdout and stderr go where the front points them (no log FIFOs); the socket is
read through a buffer (MMS reads every field with its own ``recv``); and the process dies with the front
(``PR_SET_PDEATHSIG``) or when the front closes the socket.

    python -m openmme.handlers._shard_worker --fd N --model-name openmme-shard-0 --front-pid PID
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
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
        return self._reader.read(length) or b""  # b"": the front closed its end (the codec's "disconnected")


def serve(connection: socket.socket) -> None:
    """Answer the front's messages on ``connection`` until it closes it."""
    from mms.model_loader import ModelLoaderFactory
    from mms.protocol.otf_message_handler import create_load_model_response, retrieve_msg

    reader = _BufferedSocket(connection.makefile("rb"))
    service: Any = None
    while True:
        try:
            command, message = retrieve_msg(reader)
        except ValueError:  # the front closed the socket (or sent something that is not the protocol)
            return
        if command == b"I":
            if service is None:
                raise RuntimeError("an inference message before the shard was loaded")
            connection.sendall(service.predict(message))
            continue
        model_dir = message["modelPath"].decode()
        name, handler = message["modelName"].decode(), message["handler"].decode()
        try:
            loader = ModelLoaderFactory.get_model_loader(model_dir)
            service = loader.load(name, model_dir, handler, None, int(message.get("batchSize", 1)))
        except Exception as exc:  # the front answers its callers; this worker is ended
            logger.exception("dense shard %s could not load", name)
            connection.sendall(create_load_model_response(500, f"{type(exc).__name__}: {exc}"))
            return
        connection.sendall(create_load_model_response(200, f"loaded model {name}. [PID]:{os.getpid()}"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="openmme.handlers._shard_worker")
    parser.add_argument("--fd", type=int, required=True, help="this process's end of the front's socket pair")
    parser.add_argument("--model-name", required=True, help="the shard's name (how tests and ps find it)")
    parser.add_argument("--front-pid", type=int, required=True, help="the front that started this worker")
    args = parser.parse_args(argv)
    front = args.front_pid
    die_with_parent(lambda pid: pid == front)
    # As MMS's worker does: one OpenMP thread per worker, the workers being the parallelism.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    logging.basicConfig(stream=sys.stdout, format="%(asctime)s %(name)s %(levelname)s %(message)s", level=logging.INFO)
    connection = socket.socket(fileno=args.fd)
    try:
        serve(connection)
    finally:
        connection.close()


if __name__ == "__main__":
    main()

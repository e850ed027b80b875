"""An endpoint of a transform's own: ``openmme serve`` on a free loopback port for the length of one job, for when
no endpoint is running (``openmme transform --model-prefix …``), as SageMaker starts containers for a job.

It is started as an operator starts it (``python -m openmme.cli serve``, its own process, its own cache directory
in a temporary folder), with ``SAGEMAKER_BATCH=true`` in its environment, which SageMaker sets in the containers
of a batch transform (the XGBoost handler then answers CSV with a line per record; the transform reads either
shape). It is stopped with SIGTERM when the job ends, however it ends, and killed by the kernel if this process
is (``PR_SET_PDEATHSIG``, Linux); its log is kept and named if it fails to start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from openmme.demo import wait_for_ping
from openmme.handlers._lifetime import parent_death_setter
from openmme.ports import free_port
from openmme.transform.invoker import EndpointTarget

__all__ = ["BATCH_ENVIRONMENT", "embedded_endpoint"]

BATCH_ENVIRONMENT = {"SAGEMAKER_BATCH": "true"}
NAME = "transform"


@contextlib.contextmanager
def embedded_endpoint(
    model_prefix: str,
    serve_args: Sequence[str] = (),
    *,
    start_timeout: float = 180.0,
    environment: Mapping[str, str] = BATCH_ENVIRONMENT,
) -> Iterator[EndpointTarget]:
    """``openmme serve --model-prefix model_prefix *serve_args`` while the block runs; yields where to reach it.
    ``environment``: added to this process's (``{}``: answers as a real-time endpoint does, not batch's)."""
    workdir = Path(tempfile.mkdtemp(prefix="openmme-transform-"))
    port = free_port()
    command = [
        sys.executable, "-m", "openmme.cli", "serve", "--model-prefix", model_prefix, "--endpoint-name", NAME,
        "--host", "127.0.0.1", "--port", str(port), "--cache-dir", str(workdir / "cache"), *serve_args,
    ]  # fmt: skip
    log_path = workdir / "endpoint.log"
    with log_path.open("ab") as log:
        # SIGKILL for it when this process dies, however (its own MMS and workers then follow it).
        process = subprocess.Popen(
            command,
            env={**os.environ, **environment},
            stdout=log,
            stderr=log,
            preexec_fn=parent_death_setter(),  # set before any thread of the job starts
        )
    started = False
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_for_ping(url, process, timeout=start_timeout)
        except RuntimeError as exc:
            raise RuntimeError(f"the embedded endpoint did not start ({exc}); its log: {log_path}") from exc
        started = True
        yield EndpointTarget(url, NAME)
    finally:
        process.terminate()
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        if started:  # a failed start keeps its log, named in the error
            shutil.rmtree(workdir, ignore_errors=True)

"""``openmme transform``: one job from the command line, against a running endpoint or one of its own, with a
progress line on a terminal, the failures on stderr, the summary on stdout, and the exit code a scheduler reads:
0 all objects transformed (or complete already), 1 some failed (or there were none), 2 the job is not a valid one,
130 interrupted (Ctrl-C or SIGTERM: outputs written so far are complete, the same command resumes)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Iterator

from openmme.transform.embedded import embedded_endpoint
from openmme.transform.invoker import EndpointTarget
from openmme.transform.job import transform
from openmme.transform.options import job_from_arguments, shard_from_arguments
from openmme.transform.report import NO_PROGRESS, Progress, ProgressLine, Summary
from openmme.transform.spec import TransformConfigError, TransformJob
from openmme.transform.storage import TransformStoreError

__all__ = ["main"]


@contextlib.contextmanager
def _endpoint(args: argparse.Namespace) -> Iterator[EndpointTarget]:
    if args.model_prefix:
        with embedded_endpoint(args.model_prefix, args.serve_arg) as endpoint:
            yield endpoint
        return
    verify: str | bool = args.ca_bundle or True
    yield EndpointTarget(args.endpoint_url, args.endpoint_name, verify=verify, region=args.region)


async def _until_stopped(
    job: TransformJob, endpoint: EndpointTarget, progress: Progress, shard: tuple[int, int]
) -> Summary:
    """The job, SIGTERM stopping it as Ctrl-C does (asyncio.run cancels it on SIGINT already)."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread, or no signals here
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    return await transform(job, endpoint, progress=progress, shard=shard)


def main(args: argparse.Namespace) -> int:
    try:
        job = job_from_arguments(args)
        shard = shard_from_arguments(args)
    except TransformConfigError as exc:
        print(f"openmme transform: {exc}", file=sys.stderr)
        return 2
    # A redrawn line only makes sense on a terminal; logs get the summary.
    progress: Progress = ProgressLine(sys.stderr) if sys.stderr.isatty() else NO_PROGRESS
    try:
        with _endpoint(args) as endpoint:
            summary = asyncio.run(_until_stopped(job, endpoint, progress, shard))
    except (TransformStoreError, RuntimeError) as exc:
        print(f"openmme transform: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once
        print("openmme transform: interrupted; outputs written are complete, run it again to resume", file=sys.stderr)
        return 130
    for failed in summary.failures:
        print(f"openmme transform: failed: {failed.failure()}", file=sys.stderr)
    print(summary.text(), flush=True)
    if summary.listed == 0:  # a typo in the input, most likely: not a success
        print(f"openmme transform: no input objects at {job.s3_uri}", file=sys.stderr)
        return 1
    if summary.interrupted:
        return 130
    return 1 if summary.failures else 0

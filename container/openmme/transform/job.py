"""Running a transform job: the inputs listed and shared out, each object read, cut into records and batches, sent,
its answers put back together and written once; a failure stays with its object; a summary at the end.

For each input object, in order of the sorted keys (``concurrency + 1`` objects at a time, so that small objects
still fill every request slot):

1. Its output exists with this job's fingerprint (storage.py): skipped, it is complete. That is how a re-run after
   a crash or Ctrl-C resumes: nothing written is done again, nothing unwritten is lost.
2. Read whole, split into records (``SplitType``), filtered (``InputFilter``), batched (``BatchStrategy``,
   ``MaxPayloadInMB``), one object at a time in the order they arrive, so that the first ready is sent while the
   next is made; every batch is then sent at once, at most ``concurrency`` requests in flight for the whole job
   (``MaxConcurrentTransforms``, or what the endpoint suggests), first come first served.
3. The answers split back into one output per record, joined and filtered (``DataProcessing``), assembled
   (``AssembleWith``), and written with one PutObject: the output is never partial.

When a batch fails for good, the object's later batches are cancelled, its earlier ones finish (one of them may
fail at an earlier record), and when the model refused a batch of several records (a ModelError), the batch is
halved until the first record it refuses alone is found (about 2·log2 of the batch's records in requests): the
object fails with that record's position and the model's own message, and no output (a stale output from another
job's settings is removed). The other objects go on. Nothing but the end of the job, or Ctrl-C/SIGTERM, stops it.

The object, its records and its output are held in memory while it is transformed: memory is about
``(concurrency + 1) x 3 x`` the largest object.
"""

from __future__ import annotations

import asyncio
import collections
import gzip
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import boto3

from openmme.endpoint.names import S3Location
from openmme.transform import storage
from openmme.transform.invoker import DEFAULT_CONCURRENCY, Answer, EndpointTarget, InvocationError, Invoker
from openmme.transform.records import (
    AnswerMismatch,
    RecordError,
    Records,
    assemble,
    batch_body,
    filter_inputs,
    join_outputs,
    kind_of,
    payload_batches,
    split_answer,
    split_records,
)
from openmme.transform.report import NO_PROGRESS, SKIPPED, TRANSFORMED, ObjectOutcome, Progress, Summary
from openmme.transform.spec import TransformJob
from openmme.transform.storage import InputObject, TransformStoreError

__all__ = ["run_transform", "transform"]


class _Failed(Exception):
    """The object fails: ``index`` is the first failing record's place among its records and ``line`` its line
    (None: not a record's fault)."""

    def __init__(self, index: int | None, message: str) -> None:
        super().__init__(message)
        self.index = index
        self.message = message
        self.line: int | None = None

    @classmethod
    def at(cls, index: int, message: str, records: Records) -> _Failed:
        failed = cls(index, message)
        failed.line = records.line(index)
        return failed


class _Run:
    """One job's shared state: the endpoint's client, the request slots, the S3 client, the progress."""

    def __init__(self, job: TransformJob, invoker: Invoker, client: Any, concurrency: int, progress: Progress) -> None:
        self.job = job
        self.invoker = invoker
        self.client = client
        self.progress = progress
        self.slots = asyncio.Semaphore(concurrency)
        self.preparing = asyncio.Semaphore(1)
        self.input_filter = job.input_filter
        self.output_filter = job.output_filter
        self.shaping = job.data_processing.join or not self.output_filter.is_root

    async def object(self, item: InputObject, existing: set[str]) -> ObjectOutcome:
        output = storage.output_location(self.job, item)
        outcome = ObjectOutcome(str(item), str(output))
        try:
            if output.key in existing and await self._complete(item, output):
                outcome.status, outcome.bytes_in = SKIPPED, item.size or 0
                return outcome
            data, etag = await asyncio.to_thread(storage.read, self.client, item.location)
            outcome.bytes_in = len(data)
            body, content_type = await self._transform(data, outcome)
            await asyncio.to_thread(storage.write, self.client, output, body, content_type, self.job.fingerprint(etag))
            outcome.status, outcome.bytes_out = TRANSFORMED, len(body)
        except _Failed as failed:
            outcome.error = failed.message
            if failed.index is not None:
                outcome.record, outcome.line = failed.index + 1, failed.line
            if output.key in existing:  # an output of other settings, or of an earlier version of the input
                await self._remove(output, outcome)
        except TransformStoreError as exc:
            outcome.error = str(exc)
        return outcome

    async def _complete(self, item: InputObject, output: S3Location) -> bool:
        etag = item.etag
        if not etag:
            etag = await asyncio.to_thread(storage.etag_of, self.client, item.location)
        found = await asyncio.to_thread(storage.fingerprint_of, self.client, output)
        return found == self.job.fingerprint(etag)

    async def _remove(self, output: S3Location, outcome: ObjectOutcome) -> None:
        try:
            await asyncio.to_thread(storage.remove, self.client, output)
        except TransformStoreError as exc:
            outcome.error = f"{outcome.error}; and its stale output stays: {exc}"

    async def _transform(self, data: bytes, outcome: ObjectOutcome) -> tuple[bytes, str | None]:
        """The output of one object (and its content type); _Failed when it has none."""
        job = self.job
        # One object's records made at a time, in the order their bytes arrived: the first object ready is sent
        # first, while the next is made, instead of all of them becoming ready together after a while.
        async with self.preparing:
            records, sent, batches = await asyncio.to_thread(self._prepare, data)
        del data
        outcome.records = len(records.items)
        try:
            answers = await self._send(sent, batches, outcome)
            body = await asyncio.to_thread(self._output, records, batches, answers)
        except RecordError as exc:
            raise _Failed.at(exc.index, exc.message, records) from None
        except _Failed as failed:
            if failed.index is not None and failed.line is None:
                failed.line = records.line(failed.index)
            raise
        if self.shaping:
            return body, job.content_type
        return body, next((answer.content_type for answer in answers if answer.content_type), job.accept)

    def _prepare(self, data: bytes) -> tuple[Records, Sequence[bytes], list[tuple[int, int]]]:
        """An object's records, what is sent of each, and the batches they go in (runs in a thread)."""
        job = self.job
        if job.compression_type == "Gzip":
            try:
                data = gzip.decompress(data)
            except (OSError, EOFError, zlib.error) as exc:
                raise _Failed(None, f"CompressionType Gzip, and the object is not gzip: {exc}") from exc
        records = split_records(data, job.split_type)
        try:
            sent = records.items
            if not self.input_filter.is_root:
                sent = filter_inputs(records.items, job.input_kind, self.input_filter, records.quoted)
            return records, sent, payload_batches(sent, job.batch_strategy, job.max_payload_bytes)
        except RecordError as exc:
            raise _Failed.at(exc.index, exc.message, records) from None

    async def _send(
        self, sent: Sequence[bytes], batches: list[tuple[int, int]], outcome: ObjectOutcome
    ) -> list[Answer]:
        tasks = [asyncio.create_task(self._call(sent, start, end, outcome)) for start, end in batches]

        def cancel_later(number: int) -> Callable[[asyncio.Task[Answer]], None]:
            def on_done(done: asyncio.Task[Answer]) -> None:
                if not done.cancelled() and done.exception() is not None:
                    for later in tasks[number + 1 :]:
                        later.cancel()

            return on_done

        for number, task in enumerate(tasks):
            task.add_done_callback(cancel_later(number))
        answers = []
        try:
            for number, task in enumerate(tasks):
                try:
                    answers.append(await task)
                except InvocationError as error:
                    start, end = batches[number]
                    if error.model_error and end - start > 1:
                        start, error = await self._first_failing(sent, start, end, error, outcome)
                    raise _Failed(start, str(error)) from None
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return answers

    async def _call(self, sent: Sequence[bytes], start: int, end: int, outcome: ObjectOutcome) -> Answer:
        async with self.slots:
            body = batch_body(sent, start, end)
            try:
                answer = await self.invoker.invoke(body)
            except InvocationError as error:
                outcome.requests += error.attempts
                raise
        outcome.requests += answer.attempts
        outcome.bytes_sent += len(body)
        self.progress.advance(end - start, len(body))
        return answer

    async def _first_failing(
        self, sent: Sequence[bytes], low: int, high: int, error: InvocationError, outcome: ObjectOutcome
    ) -> tuple[int, InvocationError]:
        """The first record of ``sent[low:high]`` (a batch the model refused) that it refuses alone, found by halving;
        ``low`` when only the records together fail, or when something other than the model fails meanwhile."""
        while high - low > 1:
            middle = (low + high) // 2
            for start, end in ((low, middle), (middle, high)):
                try:
                    async with self.slots:
                        outcome.requests += (await self.invoker.invoke(batch_body(sent, start, end))).attempts
                except InvocationError as found:
                    outcome.requests += found.attempts
                    if not found.model_error:
                        return low, error
                    low, high, error = start, end, found
                    break
            else:
                return low, error
        return low, error

    def _output(self, records: Records, batches: list[tuple[int, int]], answers: list[Answer]) -> bytes:
        """The output object's bytes from the answers (runs in a thread)."""
        job = self.job
        if not self.shaping and job.assemble_with != "Line":
            return b"".join(answer.body for answer in answers)
        outputs: list[bytes] = []
        for (start, end), answer in zip(batches, answers, strict=True):
            try:
                outputs.extend(split_answer(answer.body, answer.content_type or job.accept, end - start))
            except AnswerMismatch as exc:
                raise _Failed(start, f"records {start + 1} to {end}: {exc}") from exc
        if self.shaping:
            output_kind = kind_of(next((a.content_type for a in answers if a.content_type), job.accept))
            outputs = join_outputs(
                records.items,
                outputs,
                job.input_kind,
                output_kind,
                job.data_processing.join,
                self.output_filter,
                records.quoted,
            )
        return assemble(outputs, job.assemble_with)


async def transform(
    job: TransformJob,
    endpoint: EndpointTarget,
    *,
    client: Any = None,
    progress: Progress = NO_PROGRESS,
    shard: tuple[int, int] = (0, 1),
) -> Summary:
    """Run ``job`` against ``endpoint``; ``client``: boto3's S3 client (default: from the standard AWS settings);
    ``shard``: (index, count) to take that share of the inputs (a Kubernetes indexed Job's completion index).
    Returns the summary; when cancelled (Ctrl-C, SIGTERM) the summary of what was done, marked interrupted."""
    client = client or boto3.session.Session().client("s3")
    started = time.monotonic()
    listed = await asyncio.to_thread(storage.list_inputs, client, job)
    mine = storage.shard(listed, *shard)
    existing = await asyncio.to_thread(storage.completed_outputs, client, job) if mine else set()
    outcomes: list[ObjectOutcome] = []
    interrupted = False
    invoker = Invoker(
        endpoint,
        job.target_model,
        content_type=job.content_type,
        accept=job.accept,
        timeout_s=job.invocations_timeout_s,
        max_retries=job.invocations_max_retries,
        target_variant=job.target_variant,
    )
    async with invoker:
        suggested = await invoker.probe() if mine else DEFAULT_CONCURRENCY
        concurrency = job.max_concurrent_transforms or suggested
        run = _Run(job, invoker, client, concurrency, progress)
        pending = collections.deque(mine)
        sizes = [item.size for item in mine]
        progress.start(len(mine), None if None in sizes else sum(size or 0 for size in sizes))

        async def worker() -> None:
            while pending:
                outcome = await run.object(pending.popleft(), existing)
                outcomes.append(outcome)
                progress.object_done(outcome)

        workers = [asyncio.create_task(worker()) for _ in range(min(len(mine), concurrency + 1))]
        try:
            await asyncio.gather(*workers)
        except asyncio.CancelledError:
            interrupted = True
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
            progress.finish()
    order = {str(item): position for position, item in enumerate(mine)}
    outcomes.sort(key=lambda outcome: order[outcome.source])
    return Summary(outcomes, time.monotonic() - started, concurrency, interrupted, shard, len(listed))


def run_transform(
    job: TransformJob,
    endpoint: EndpointTarget,
    *,
    client: Any = None,
    progress: Progress = NO_PROGRESS,
    shard: tuple[int, int] = (0, 1),
) -> Summary:
    """``transform`` from blocking code: runs its own event loop."""
    return asyncio.run(transform(job, endpoint, client=client, progress=progress, shard=shard))

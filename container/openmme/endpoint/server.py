"""``openmme serve``: start MMS, wait for it, serve the front, and stop everything on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import logging
import os
import shutil
import signal
import ssl
import sys

from aiohttp import web

from openmme.endpoint.aliases import AliasReader, AliasTable
from openmme.endpoint.app import ASYNC, build_app
from openmme.endpoint.asyncinvoke import AsyncInvocations
from openmme.endpoint.auth import AuthConfigError, KeyStore, check_exposure, describe, load_keys
from openmme.endpoint.cache.core import ModelCache, budgets_for
from openmme.endpoint.cache.keeping import (
    KeepingConfigError,
    Preload,
    Usage,
    check_keeping,
    preload_targets,
    read_usage,
)
from openmme.endpoint.cache.store import ModelStore
from openmme.endpoint.capture import Capturer
from openmme.endpoint.dataplane import DataPlane
from openmme.endpoint.edges import Edges
from openmme.endpoint.hosting import MmsHosting
from openmme.endpoint.lock import CacheDirError, CacheDirLock
from openmme.endpoint.logs import EventLog, configure_logging
from openmme.endpoint.metrics import Metrics
from openmme.endpoint.mms import MmsClient, MmsProcess, find_java
from openmme.endpoint.pipelines import Pipelines
from openmme.endpoint.s3 import ModelSource, PrefixUnreachable, PrefixUnusable, S3Location, check_prefix, make_client
from openmme.endpoint.settings import LISTEN_BACKLOG, Settings
from openmme.endpoint.slowclients import Runner
from openmme.endpoint.tls import TlsConfigError, tls_context
from openmme.handlers import ISOLATED
from openmme.ports import listen_error

__all__ = ["CannotListen", "MmsDidNotStart", "run", "serve"]

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL_S = 2.0
PREFIX_RETRY_INTERVAL_S = 1.0
MEMORY_EVERY_ROUNDS = 3


class CannotListen(Exception):
    """The front's address cannot be listened on (most often: another process has the port)."""

    @classmethod
    def explain(cls, settings: Settings, exc: OSError) -> CannotListen:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        if exc.errno == errno.EADDRINUSE:
            return cls(f"port {settings.port} on {settings.host} is taken ({reason}); choose another --port")
        return cls(f"cannot listen on {settings.host}:{settings.port} ({reason})")


class MmsDidNotStart(RuntimeError):
    """MMS exited, or did not answer in time, while starting; the message names its log."""


async def _wait_for_mms(process: MmsProcess, mms: MmsClient, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if not process.running():
            raise MmsDidNotStart(f"MMS exited during start; see {process.log_path}")
        if await mms.ping():
            return
        await asyncio.sleep(0.2)
    raise MmsDidNotStart(f"MMS did not answer within {timeout:g} s; see {process.log_path}")


async def _check_model_prefix(settings: Settings) -> None:
    """Refuse to start (PrefixUnusable) on a model prefix that cannot serve, as SageMaker fails CreateEndpoint when
    it cannot reach the model data; S3 that does not answer is tried again for ``--model-prefix-wait`` seconds."""
    prefix = S3Location.parse_prefix(settings.model_prefix)
    # botocore's max_attempts counts the retries: 0, one try per round; the rounds here are the retries.
    client = await asyncio.to_thread(make_client, connect_timeout=2, read_timeout=5, max_attempts=0, pool=1)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.model_prefix_wait
    for attempt in itertools.count():
        try:
            await asyncio.to_thread(check_prefix, prefix, client)
            return
        except PrefixUnreachable as exc:
            if loop.time() >= deadline:
                raise PrefixUnusable(
                    f"{exc}, for {settings.model_prefix_wait:g} s: start it or fix AWS_ENDPOINT_URL_S3"
                    " (--model-prefix-wait: how long serve waits for it)"
                ) from exc
            if attempt == 0:
                log.warning("%s; trying again for up to %g s", exc, settings.model_prefix_wait)
            await asyncio.sleep(PREFIX_RETRY_INTERVAL_S)


async def _housekeeping(hosting: MmsHosting, process: MmsProcess | None, cache: ModelCache) -> None:
    """Every couple of seconds: find dead or leftover MMS workers; every few rounds, measure memory too (so the
    memory budget holds as models grow); unload idle models (--idle-ttl) and write the usage record now and then.
    ``process``: None when MMS is not started (no Java runtime)."""
    rounds = 0
    while True:
        await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)
        if process is not None and not process.running():
            continue  # the supervisor is restarting MMS
        rounds += 1
        try:
            await cache.tend()
            await hosting.check_workers(measure_memory=rounds % MEMORY_EVERY_ROUNDS == 0)
        except Exception:
            log.exception("housekeeping failed")


async def _supervise(
    cache: ModelCache, hosting: MmsHosting, process: MmsProcess, mms: MmsClient, settings: Settings
) -> None:
    """Restart MMS whenever it dies, then load again what was loaded; /ping says unhealthy meanwhile."""
    while True:
        assert process.process is not None
        code = await asyncio.to_thread(process.process.wait)
        log.error("MMS exited with code %s; restarting it (see %s)", code, process.log_path)
        reload = cache.host_lost(hosting.lost_with_mms)
        delay = 1.0
        while True:
            try:
                await asyncio.to_thread(process.stop, final=False)
                # Started from this thread, the event loop's, never a pool thread: the kernel kills the Java
                # front when the thread that started it exits (see MmsProcess.start).
                process.start()
                await _wait_for_mms(process, mms, settings.mms_start_timeout)
                break
            except Exception as exc:
                log.error("restarting MMS failed (%s); trying again in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        log.info("MMS is back; loading %d model(s) again", len(reload))
        cache.reload(reload)


async def run(
    settings: Settings,
    stop: asyncio.Event | None = None,
    keys: KeyStore | None = None,
    tls: ssl.SSLContext | None = None,
) -> None:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT arrives); ``keys`` are those ``--auth sigv4`` accepts, ``tls``
    the context of ``--tls-cert``/``--tls-key`` (HTTPS; None: plain HTTP).

    Raises CacheDirError when the cache directory cannot be this front's (another front owns it), CannotListen
    when the address is taken and PrefixUnusable when the model prefix cannot serve, all before anything is
    started or changed."""
    with CacheDirLock(settings.cache_dir):
        failure = listen_error(settings.host, settings.port)
        if failure is not None:
            raise CannotListen.explain(settings, failure)
        if settings.model_prefix:
            await _check_model_prefix(settings)
        await _run_owned(settings, stop, keys, tls)


async def _run_owned(
    settings: Settings, stop: asyncio.Event | None, keys: KeyStore | None, tls: ssl.SSLContext | None
) -> None:
    """``run``, once this process owns the cache directory."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)

    process = MmsProcess(settings)
    stopped = await asyncio.to_thread(process.reap_leftovers)
    if stopped:
        log.warning(
            "stopped %d MMS process(es) an earlier openmme serve of %s left running", len(stopped), settings.cache_dir
        )
    # The cache is not persistent across restarts (as on a SageMaker instance): start from a clean store.
    for directory in (settings.models_dir, settings.staging_dir):
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True, exist_ok=True)
    budgets = budgets_for(settings)
    source = ModelSource(S3Location.parse_prefix(settings.model_prefix)) if settings.model_prefix else None
    fronts_dir = Edges.socket_directory() if settings.front_count > 1 else None  # --fronts: the edges' sockets

    # Without a Java runtime (the default image) MMS is not started: dense models are served by the front's own
    # shards, and a model that needs isolated hosting is refused when it loads (MmsHosting.prepare).
    with_mms = process.java is not None
    if with_mms:
        process.start()
    else:
        log.warning("no Java runtime found: multi-model-server is not started; dense models only")
        process.home.mkdir(parents=True, exist_ok=True)  # the shards' log (shards.out) is written there all the same
    try:
        async with MmsClient(process.config.inference_port, process.config.management_port) as mms:
            if with_mms:
                await _wait_for_mms(process, mms, settings.mms_start_timeout)
            metrics = Metrics(model_labels=settings.metrics_model_labels)
            hosting = MmsHosting(settings, mms, process, fronts_dir)
            recorded = await asyncio.to_thread(read_usage, settings.cache_dir)  # what --preload-top reads
            cache = ModelCache(
                settings,
                budgets,
                hosting,
                ModelStore(settings, source),
                events=(metrics, EventLog()),
                usage=Usage(recorded),
            )
            metrics.watch(cache, hosting.shards)
            preload = Preload(preload_targets(settings, recorded), cache.warm, settings.preload_concurrency)
            metrics.watch_preload(preload)
            if settings.hosting == "dense":
                await hosting.start_shards()
            capture = Capturer.from_settings(settings, metrics) if settings.capture_destination else None
            aliases = None
            if source is not None and settings.alias_refresh:  # aliases of the prefix (aliases.py)
                aliases = AliasTable(settings, cache, metrics, AliasReader(source.prefix))
                await aliases.start()  # before the front serves: the documents as S3 (or the last run) has them
            pipelines = Pipelines.from_settings(settings, source)  # checked already by serve()
            plane = DataPlane(cache, metrics, capture, aliases, pipelines)
            app = build_app(settings, plane, mms if with_mms else None, metrics, keys, preload)
            asynchronous = None
            if settings.async_output_path:  # InvokeEndpointAsync on
                app[ASYNC] = asynchronous = AsyncInvocations.from_settings(settings, plane, metrics)
            runner = Runner(app, header_timeout=settings.header_timeout, access_log=None, shutdown_timeout=30.0)
            await runner.setup()
            site = web.TCPSite(
                runner,
                settings.host,
                settings.port,
                reuse_address=True,
                reuse_port=fronts_dir is not None,  # shared with the edge fronts
                ssl_context=tls,
                backlog=LISTEN_BACKLOG,
            )
            try:
                await site.start()
            except OSError as exc:  # taken since the check above
                await runner.cleanup()
                raise CannotListen.explain(settings, exc) from exc
            log.info(
                "openmme endpoint %r serving on %s://%s:%d; models from %s; budgets: %s",
                settings.endpoint_name,
                "https" if tls else "http",
                settings.host,
                settings.port,
                settings.model_prefix or "SageMaker (POST /models)",
                budgets,
            )
            log.log(*describe(settings, keys))
            edges = None
            if fronts_dir is not None:  # --fronts: the edges forward what they do not answer to this process
                edges = Edges(settings, cache, metrics, fronts_dir, hosting.dense.pool.listen_paths())
                await web.UnixSite(runner, edges.forward_path).start()
                await edges.start()
            if capture is not None:
                capture.start()
            if asynchronous is not None:  # what an earlier run accepted and did not finish runs now
                await asynchronous.start()
            background = [
                asyncio.create_task(_housekeeping(hosting, process if with_mms else None, cache), name="housekeeping"),
                asyncio.create_task(preload.run(), name="pre-load"),  # /ping answers meanwhile; /ready once done
            ]
            if with_mms:
                background.append(
                    asyncio.create_task(_supervise(cache, hosting, process, mms, settings), name="supervise MMS")
                )
            if aliases is not None:
                background.append(asyncio.create_task(aliases.run(), name="refresh aliases"))
            if edges is not None:
                background.append(asyncio.create_task(edges.run(), name="routes to the edge fronts"))
            try:
                await stop.wait()
                log.info("stopping: finishing requests in flight")
            finally:
                for task in background:
                    task.cancel()
                if edges is not None:  # first: they finish their requests, forwarding to this process meanwhile
                    await edges.stop()
                await runner.cleanup()
                if asynchronous is not None:  # before the data plane's parts stop: running requests may finish
                    await asynchronous.close()
                await plane.close()  # mirrored invocations finish, alias switches stop
                await cache.save_usage()  # --preload-top's list for the next start
                if capture is not None:  # after the last request: what it captured is written too
                    await capture.close()
                await hosting.stop_shards()
    finally:
        await asyncio.to_thread(process.stop)
        if fronts_dir is not None:
            shutil.rmtree(fronts_dir, ignore_errors=True)
        log.info("stopped")


def serve(settings: Settings) -> None:
    configure_logging(settings.log_level)
    try:
        # Before anything starts or binds: an endpoint that would be open to the network does not come up at all.
        keys = load_keys(settings, os.environ)
        check_exposure(settings)
        tls = tls_context(settings)
        for warning in check_keeping(settings):
            log.warning("%s", warning)
        Pipelines.from_settings(settings, None)  # a --pipeline-file that cannot be served stops the start
        if settings.hosting == ISOLATED and find_java() is None:
            raise ValueError(
                "--hosting isolated runs every model in multi-model-server, which needs a Java runtime, and none was"
                " found (JAVA_HOME, PATH): use the default image (not --target dense), install a JRE, or"
                " serve with --hosting dense"
            )
        if settings.front_count > 1 and settings.auth_refuse_replays:
            raise ValueError(
                "--auth-refuse-replays needs one front process (--fronts 1): each front would remember only the"
                " signatures it saw, so a replay sent to another would be accepted"
            )
    except (AuthConfigError, TlsConfigError, KeepingConfigError, ValueError) as exc:
        print(f"openmme serve: {exc}", file=sys.stderr)  # settings that cannot work together: exit 2, as argparse's
        raise SystemExit(2) from None
    # The main thread runs the event loop, which starts MMS: a thread that lives as long as the process (see
    # MmsProcess.start).
    try:
        try:
            import uvloop  # a dependency where it builds (not on Windows)
        except ImportError:
            asyncio.run(run(settings, keys=keys, tls=tls))
        else:
            uvloop.run(run(settings, keys=keys, tls=tls))
    except (CacheDirError, CannotListen, PrefixUnusable, MmsDidNotStart) as exc:
        raise SystemExit(f"openmme serve: {exc}") from None
    except KeyboardInterrupt:  # Ctrl-C before the front took over SIGINT (while waiting for S3, say)
        print("openmme serve: interrupted before it started", file=sys.stderr)
        raise SystemExit(130) from None

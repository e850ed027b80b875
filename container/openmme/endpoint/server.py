"""``openmme serve``: start MMS, wait for it, serve the front, and stop everything on SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal

from aiohttp import web

from openmme.endpoint.app import build_app
from openmme.endpoint.auth import AuthConfigError, KeyStore, check_exposure, describe, load_keys
from openmme.endpoint.cache import Budgets, ModelCache
from openmme.endpoint.logs import EventLog, configure_logging
from openmme.endpoint.metrics import Metrics
from openmme.endpoint.mms import MmsClient, MmsProcess
from openmme.endpoint.s3 import ModelSource, S3Location
from openmme.endpoint.settings import Settings

__all__ = ["run", "serve"]

log = logging.getLogger(__name__)

HOUSEKEEPING_INTERVAL_S = 2.0
MEMORY_EVERY_ROUNDS = 3


async def _wait_for_mms(process: MmsProcess, mms: MmsClient, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if not process.running():
            raise RuntimeError(f"MMS exited during start; see {process.log_path}")
        if await mms.ping():
            return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"MMS did not answer within {timeout:g} s; see {process.log_path}")


async def _housekeeping(cache: ModelCache, process: MmsProcess) -> None:
    """Every couple of seconds: find dead or leftover MMS workers; every few rounds, measure memory too (so the
    memory budget holds as models grow)."""
    rounds = 0
    while True:
        await asyncio.sleep(HOUSEKEEPING_INTERVAL_S)
        if not process.running():
            continue  # the supervisor is restarting MMS
        rounds += 1
        try:
            await cache.check_workers(measure_memory=rounds % MEMORY_EVERY_ROUNDS == 0)
        except Exception:
            log.exception("housekeeping failed")


async def _supervise(cache: ModelCache, process: MmsProcess, mms: MmsClient, settings: Settings) -> None:
    """Restart MMS whenever it dies, then load again what was loaded; /ping says unhealthy meanwhile."""
    while True:
        assert process.process is not None
        code = await asyncio.to_thread(process.process.wait)
        log.error("MMS exited with code %s; restarting it (see %s)", code, process.log_path)
        reload = cache.mms_lost()
        delay = 1.0
        while True:
            try:
                await asyncio.to_thread(process.restart)
                await _wait_for_mms(process, mms, settings.mms_start_timeout)
                break
            except Exception as exc:
                log.error("restarting MMS failed (%s); trying again in %.0f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        log.info("MMS is back; loading %d model(s) again", len(reload))
        await cache.mms_back(reload)


async def run(settings: Settings, stop: asyncio.Event | None = None, keys: KeyStore | None = None) -> None:
    """Serve until ``stop`` is set (or SIGTERM/SIGINT arrives); ``keys`` are those ``--auth sigv4`` accepts."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)

    # The cache is not persistent across restarts (as on a SageMaker instance): start from a clean store.
    for directory in (settings.models_dir, settings.staging_dir):
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True, exist_ok=True)
    budgets = Budgets.from_settings(settings)
    source = ModelSource(S3Location.parse_prefix(settings.model_prefix)) if settings.model_prefix else None

    process = MmsProcess(settings)
    process.start()
    try:
        async with MmsClient(process.config.inference_port, process.config.management_port) as mms:
            await _wait_for_mms(process, mms, settings.mms_start_timeout)
            metrics = Metrics(model_labels=settings.metrics_model_labels)
            cache = ModelCache(settings, budgets, mms, process, source, events=(metrics, EventLog()))
            metrics.watch(cache)
            if settings.hosting == "dense":
                await cache.start_shards()
            app = build_app(settings, cache, mms, metrics, keys)
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=30.0)
            await runner.setup()
            site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
            await site.start()
            log.info(
                "openmme endpoint %r serving on http://%s:%d; models from %s; budgets: %s",
                settings.endpoint_name,
                settings.host,
                settings.port,
                settings.model_prefix or "SageMaker (POST /models)",
                budgets,
            )
            log.log(*describe(settings, keys))
            background = [
                asyncio.create_task(_housekeeping(cache, process), name="housekeeping"),
                asyncio.create_task(_supervise(cache, process, mms, settings), name="supervise MMS"),
            ]
            try:
                await stop.wait()
                log.info("stopping: finishing requests in flight")
            finally:
                for task in background:
                    task.cancel()
                await runner.cleanup()
    finally:
        await asyncio.to_thread(process.stop)
        log.info("stopped")


def serve(settings: Settings) -> None:
    configure_logging(settings.log_level)
    try:
        # Before anything starts or binds: an endpoint that would be open to the network does not come up at all.
        keys = load_keys(settings, os.environ)
        check_exposure(settings)
    except AuthConfigError as exc:
        raise SystemExit(f"openmme serve: {exc}") from None
    try:
        import uvloop  # a dependency where it builds (not on Windows)
    except ImportError:
        asyncio.run(run(settings, keys=keys))
    else:
        uvloop.run(run(settings, keys=keys))

"""The endpoint's settings: one class, one env prefix (``OPENMME_``), parsed once at start.

Every option of ``openmme serve`` is a field here; its command-line flag is ``--field-name`` and its environment
variable ``OPENMME_FIELD_NAME``. The flag wins over the variable, the variable over the default. SageMaker's own
``SAGEMAKER_BIND_TO_PORT`` is honoured for the port, so the image runs unchanged under SageMaker.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["ENV_PREFIX", "LISTEN_BACKLOG", "MAX_BODY_BYTES", "OneLineErrors", "Settings", "parse_bytes", "usable_cores"]

ENV_PREFIX = "OPENMME_"
MAX_BODY_BYTES = 6 * 1024 * 1024  # SageMaker's invoke_endpoint payload limit: 6 MiB.
# How many connections the kernel queues for a front before it accepts them (capped by net.core.somaxconn).
# aiohttp's default, 128, overflowed when a client opened hundreds of connections at once: the soak's open loop
# had 39 of 519,000 requests reset before the front saw them (bench/soak.py, BENCHMARKS.md).
LISTEN_BACKLOG = 1024

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
    "ti": 1024**4,
    "tib": 1024**4,
}


class OneLineErrors(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr, ``openmme serve: <what is wrong> (see …)``, exit 2:
    not argparse's usage first, which for ``serve`` would be every flag. Its subcommands' parsers are of its kind."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def parse_bytes(text: str) -> int:
    """``"512MiB"`` → 536870912; ``"2G"`` → 2000000000; a bare number is bytes; ``0`` means "no limit"."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (examples: 500MB, 8GiB, 1048576)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _parse_auth(text: str) -> str:
    scheme = text.strip().lower()
    if scheme in {"", "none"}:
        return ""
    if scheme == "sigv4":
        return scheme
    raise ValueError(f"not an authentication scheme: {text!r} (sigv4, or none)")


@dataclass(frozen=True)
class _OneOf:
    """The parser of a setting that takes one of ``choices``, in any case; ``--help`` shows them as ``{a,b}``."""

    noun: str  # what one of them is called, for the error
    choices: tuple[str, ...]  # as the setting holds them: all lower case or all upper case

    def __call__(self, text: str) -> str:
        value = text.strip().upper() if self.choices[0].isupper() else text.strip().lower()
        if value in self.choices:
            return value
        listed = " or ".join(self.choices) if len(self.choices) == 2 else ", ".join(self.choices)
        raise ValueError(f"not {self.noun}: {text!r} ({listed})")

    @property
    def metavar(self) -> str:
        return "{" + ",".join(self.choices) + "}"


_parse_hosting = _OneOf("a hosting mode", ("dense", "isolated"))
_parse_admission = _OneOf("an admission policy", ("lru", "tinylfu"))
_parse_log_level = _OneOf("a log level", ("DEBUG", "INFO", "WARNING", "ERROR"))
_parse_model_cache = _OneOf("a model cache setting", ("enabled", "disabled"))
_parse_capture_mode = _OneOf("a capture mode", ("input", "output", "both"))


def _parse_s3_uri(text: str) -> str:
    """A data capture destination: ``s3://bucket[/prefix]``, kept as given (empty: capture off)."""
    uri = text.strip()
    if uri and (not uri.startswith("s3://") or not uri[len("s3://") :].partition("/")[0]):
        raise ValueError(f"not an S3 URI: {text!r} (expected s3://bucket/prefix)")
    return uri


def _parse_percentage(text: str) -> float:
    percentage = float(text)
    if not 0 <= percentage <= 100:
        raise ValueError(f"not a percentage: {text!r} (0 to 100)")
    return percentage


def _parse_media_type(text: str) -> str:
    media_type = text.strip().lower()
    if media_type.count("/") != 1 or ";" in media_type or " " in media_type:
        raise ValueError(f"not a media type: {text!r} (e.g. text/csv, without parameters)")
    return media_type


def _parse_variant(text: str) -> str:
    """A production variant's name, by SageMaker's VariantName pattern (it becomes an S3 key segment)."""
    if not re.fullmatch(r"[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}", text):
        raise ValueError(f"not a variant name: {text!r} (letters, digits and inner hyphens, at most 63)")
    return text


def _parse_interval(text: str) -> float:
    seconds = float(text)
    if seconds <= 0:
        raise ValueError(f"not an interval: {text!r} (more than 0 seconds)")
    return seconds


def _parse_seconds(text: str) -> float:
    seconds = float(text)
    if seconds < 0:
        raise ValueError(f"not a duration: {text!r} (0 or more seconds)")
    return seconds


def _parse_count(text: str) -> int:
    count = int(text)
    if count < 0:
        raise ValueError(f"not a count: {text!r} (0 or more)")
    return count


def _parse_java_size(text: str) -> str:
    if not re.fullmatch(r"[1-9]\d*[kKmMgG]?", text.strip()):
        raise ValueError(f"not a Java heap size: {text!r} (examples: 512m, 2g)")
    return text.strip()


def _parse_port(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"not a port: {text!r} (1 to 65535)")
    return int(text)


def _parse_positive(text: str) -> int:
    count = int(text)
    if count < 1:
        raise ValueError(f"must be at least 1: {text!r}")
    return count


def _opt(
    default: Any,
    help: str,
    parse: Callable[[str], Any] | None = None,
    metavar: str | None = None,
    repeated: bool = False,
) -> Any:
    """A setting; ``metavar`` names its values in ``--help`` (its choices, or its unit). ``repeated``: the flag may
    be given several times, the environment variable holds the values separated by commas; the setting is the
    tuple of them all."""
    return field(default=default, metadata={"help": help, "parse": parse, "metavar": metavar, "repeated": repeated})


def usable_cores() -> int:
    """The cores this process may use: the CPUs it may run on, fewer under a cgroup v2 CPU quota (a container's
    CPU limit, which the CPU count alone does not show)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return cores
    if quota == "max":
        return cores
    return max(1, min(cores, -(-int(quota) // int(period))))


def _parse_pipeline_name(value: str) -> str:
    if value and not value.endswith(".pipeline.json"):
        raise ValueError(f"a pipeline manifest's name ends in .pipeline.json: {value!r}")
    return value


def _parse_pipeline_file(value: str) -> tuple[str, Path]:
    name, equals, path = value.partition("=")
    if not equals or not path:
        raise ValueError(f"expected NAME.pipeline.json=PATH, got {value!r}")
    return _parse_pipeline_name(name), Path(path)


def _metavar(spec: dataclasses.Field[Any]) -> str:
    """What ``--help`` shows after a flag: the field's own, else its kind of value (a size, a path, a number)."""
    parse = spec.metadata["parse"]
    if spec.metadata["metavar"]:
        return str(spec.metadata["metavar"])
    if isinstance(parse, _OneOf):
        return parse.metavar
    return {parse_bytes: "SIZE", Path: "PATH", int: "N", float: "NUMBER"}.get(parse, spec.name.upper())


def _shown_default(spec: dataclasses.Field[Any]) -> str:
    value: Any = spec.default
    if isinstance(value, bool):
        return "on" if value else "off"
    if value is None or value == "" or value == ():
        return "unset"
    if isinstance(value, tuple):
        return ",".join(value)
    if spec.metadata["parse"] is parse_bytes and value:
        for unit in ("TiB", "GiB", "MiB", "KiB"):
            if value % _UNITS[unit.lower()] == 0:
                return f"{value // _UNITS[unit.lower()]}{unit}"
    return str(value)


_HELP_EPILOG = (
    "SIZE: bytes, or a number with a unit: 500MB, 8GiB (k, M, G, T: powers of 1000; Ki, Mi, Gi, Ti: of 1024); 0 turns"
    " a budget off. SECONDS may have a fraction (0.5). Every flag can also be set by the environment variable shown."
)


@dataclass(frozen=True)
class Settings:
    """How one endpoint runs. Sizes accept units (``8GiB``, ``500MB``); ``0`` turns a budget off."""

    model_prefix: str = _opt(
        "",
        "S3 URI every TargetModel is relative to, e.g. s3://models/prod/ (empty: SageMaker-hosted mode only)",
        _parse_s3_uri,
        "S3_URI",
    )
    model_prefix_wait: float = _opt(
        30.0,
        "seconds serve waits at start for the model prefix's S3 to answer (as when S3 starts beside it); a missing"
        " bucket, missing credentials or a denied listing refuse the start at once, as does S3 still away after this",
        _parse_seconds,
        "SECONDS",
    )
    endpoint_name: str = _opt("openmme", "the EndpointName clients call; other names get a ValidationError")
    host: str = _opt("127.0.0.1", "address the front binds")
    port: int = _opt(8080, "port the front binds (SAGEMAKER_BIND_TO_PORT also sets it)", _parse_port, "PORT")
    cache_dir: Path = _opt(  # noqa: RUF009  (an immutable default)
        Path("/tmp/openmme"),
        "where archives are extracted and MMS keeps its files; emptied at start, and one endpoint's only (a second"
        " openmme serve on the same directory is refused)",
        Path,
        "DIR",
    )
    max_models: int = _opt(0, "most models loaded in MMS at once (0: no count limit)", int)
    memory_budget: int = _opt(
        0,
        "most memory the loaded models' worker processes may hold (0: 60%% of this machine's RAM)",
        parse_bytes,
    )
    disk_budget: int = _opt(
        0, "most bytes of extracted models kept on disk (0: 80%% of the cache disk's free space)", parse_bytes
    )
    admission: str = _opt(
        "lru",
        "which model may take an evicted one's place: lru (every model loaded to answer stays, least recently used"
        " leaves first, as on SageMaker) or tinylfu (a model asked for no more often lately than the one it would"
        " push out answers and is unloaded first instead: for skewed traffic with a long tail of rare models)",
        _parse_admission,
    )
    # Keeping models hot (cache/keeping.py): pinning, pre-loading, idle unloading, SageMaker's ModelCacheSetting.
    pin: tuple[str, ...] = _opt(
        (),
        "a TargetModel, or an fnmatch pattern (houston/*), that eviction never unloads or deletes; pinned models"
        " count against the budgets, and a load that would need a pinned model's room is refused (507); repeatable",
        str,
        "PATTERN",
        repeated=True,
    )
    preload: tuple[str, ...] = _opt(
        (),
        "a TargetModel loaded in the background at start (GET /ready says when pre-loading is done); repeatable",
        str,
        "NAME",
        repeated=True,
    )
    preload_top: int = _opt(
        0,
        "also pre-load the N models most used before the last stop (recorded in --cache-dir, kept across restarts)",
        _parse_count,
        "N",
    )
    preload_concurrency: int = _opt(2, "models pre-loaded at once", _parse_positive, "N")
    idle_ttl: float = _opt(
        0.0,
        "unload a model no request used for this many seconds, checked every 2 s (0: never; pinned models never)",
        _parse_seconds,
        "SECONDS",
    )
    idle_ttl_delete: bool = _opt(
        False, "with --idle-ttl, also delete the idle model's files from the cache disk", _parse_bool
    )
    model_cache: str = _opt(
        "enabled",
        "SageMaker's ModelCacheSetting: disabled unloads a model and deletes its files after each call (for many"
        ' rarely used models); an archive\'s openmme.json {"modelCache": ...} overrides this',
        _parse_model_cache,
    )
    max_archive_bytes: int = _opt(8 * 1024**3, "an archive whose extracted size is larger is refused", parse_bytes)
    max_archive_members: int = _opt(100_000, "an archive with more members is refused", int)
    max_archive_ratio: int = _opt(
        200, "an archive that expands more than this many times its size (past 16 MiB) is refused", int
    )
    wait_budget: float = _opt(
        60.0, "seconds a request waits for its model to load before ModelNotReadyException (429)", float, "SECONDS"
    )
    hosting: str = _opt(
        "dense",
        "where boosters run: dense (many per warm shard worker, ~20 ms loads) or isolated (an MMS model and worker"
        " process each, as on SageMaker); archives with code/inference.py always run isolated, and an archive's"
        ' openmme.json {"hosting": ...} overrides this',
        _parse_hosting,
    )
    shards: int = _opt(
        0,
        "dense shards, each one worker process holding many models (0: one per usable core: the CPUs this process"
        " may run on, fewer under a container's CPU quota)",
        int,
    )
    fronts: int = _opt(
        0,
        "front processes sharing the port (SO_REUSEPORT): this one, the owner of model state, and fronts-1 edges"
        " that answer warm invocations of dense models themselves and forward the rest to it; one Python front"
        " answers a few thousand requests a second at most, so a big machine needs several (0: one per two CPU"
        " cores, at least one)",
        int,
        "N",
    )
    workers_per_model: int = _opt(1, "MMS worker processes per isolated model", int)
    job_queue_size: int = _opt(100, "requests queued per model (dense: per shard) before answering 503 (overload)", int)
    allow_pickle: bool = _opt(
        False,
        "let handlers unpickle model files (only for prefixes whose every writer you trust)",
        _parse_bool,
    )
    auth: str = _opt(
        "",
        "sigv4: every request but GET /ping must carry an AWS Signature V4 made with a key from --auth-keys-file"
        " or OPENMME_AUTH_ACCESS_KEY_ID/OPENMME_AUTH_SECRET_ACCESS_KEY (empty: no authentication)",
        _parse_auth,
        "{sigv4,none}",
    )
    auth_keys_file: Path | None = _opt(  # noqa: RUF009  (an immutable default)
        None,
        'JSON {"keys": [{"access_key_id", "secret_access_key", "allow": ["houston/*"]}]}: the keys --auth sigv4'
        " accepts and the TargetModels each may invoke",
        Path,
    )
    auth_exempt_metrics: bool = _opt(
        False, "with --auth, serve GET /metrics unsigned (Prometheus cannot sign; metrics name models)", _parse_bool
    )
    allow_unauthenticated_remote: bool = _opt(
        False,
        "listen on a non-loopback --host without --auth (only behind something that authenticates callers, as"
        " SageMaker does)",
        _parse_bool,
    )
    auth_refuse_replays: bool = _opt(
        False,
        "with --auth, refuse a signature seen before, as a replay (AWS does not): for plain-HTTP deployments that"
        " accept that two identical requests signed within the same second are refused; TLS is the real defence",
        _parse_bool,
    )
    tls_cert: Path | None = _opt(  # noqa: RUF009  (an immutable default)
        None, "PEM certificate (chain) to serve HTTPS with; needs --tls-key (neither: plain HTTP)", Path
    )
    tls_key: Path | None = _opt(  # noqa: RUF009  (an immutable default)
        None, "PEM private key of --tls-cert (not encrypted)", Path
    )
    mms_heap: str = _opt(
        "512m", "maximum heap of MMS's Java front (-Xmx; Java's units: 512m, 2g)", _parse_java_size, "JAVA_SIZE"
    )
    mms_inference_port: int = _opt(0, "MMS inference port on 127.0.0.1 (0: pick a free one below 32767)", int, "PORT")
    mms_management_port: int = _opt(0, "MMS management port on 127.0.0.1 (0: pick a free one below 32767)", int, "PORT")
    mms_start_timeout: float = _opt(120.0, "seconds MMS may take to start", float, "SECONDS")
    response_timeout: float = _opt(60.0, "seconds a prediction may take inside MMS", float, "SECONDS")
    header_timeout: float = _opt(
        10.0,
        "seconds a client has to send a request's headers, from its connection (or, on a kept-alive connection, the"
        " headers' first byte); slower connections are closed, so that slow clients hold only their own",
        _parse_interval,
        "SECONDS",
    )
    body_timeout: float = _opt(
        60.0,
        "seconds a client has to send a request's body once its headers are in (SageMaker's invocation time-out);"
        " slower bodies are answered RequestTimeout (408)",
        _parse_interval,
        "SECONDS",
    )
    metrics_model_labels: int = _opt(
        50, 'models that get their own label in per-model metrics; later ones count as model="other"', int
    )
    # Data capture (capture.py): SageMaker's DataCaptureConfig, written in its S3 layout for Model Monitor tooling.
    capture_destination: str = _opt(
        "",
        "S3 URI data capture writes to (SageMaker's DestinationS3Uri), as <uri>/<endpoint>/<variant>/yyyy/mm/dd/hh/"
        "*.jsonl; S3 settings as for the models (empty: no capture)",
        _parse_s3_uri,
        "S3_URI",
    )
    capture_sampling_percentage: float = _opt(
        20.0,
        "percentage of invocations captured (InitialSamplingPercentage; may have a fraction)",
        _parse_percentage,
        "PERCENT",
    )
    capture_mode: str = _opt(
        "both", "what is captured (CaptureMode): the request, the response, or both", _parse_capture_mode
    )
    capture_csv_content_types: tuple[str, ...] = _opt(
        ("text/csv",),
        "content types captured as CSV text (CsvContentTypes); types neither CSV nor JSON are captured base64;"
        " repeatable",
        _parse_media_type,
        "TYPE",
        repeated=True,
    )
    capture_json_content_types: tuple[str, ...] = _opt(
        ("application/json",),
        "content types captured as JSON text (JsonContentTypes); repeatable",
        _parse_media_type,
        "TYPE",
        repeated=True,
    )
    capture_models: tuple[str, ...] = _opt(
        (),
        "capture only TargetModels matching this fnmatch pattern (houston/*); repeatable (unset: every model)",
        str,
        "PATTERN",
        repeated=True,
    )
    capture_variant: str = _opt(
        "AllTraffic",
        "the variant name in the capture path (SageMaker's VariantName rules; the endpoint answers as AllTraffic)",
        _parse_variant,
        "NAME",
    )
    capture_buffer: int = _opt(
        64 * 1024**2,
        "most bytes of captured requests and responses held in memory awaiting S3; past it a capture is dropped,"
        " never waited for",
        parse_bytes,
    )
    capture_flush_interval: float = _opt(
        10.0,
        "seconds between writes of captured invocations to S3 (one object per hour partition per write)",
        _parse_interval,
        "SECONDS",
    )
    # Asynchronous invocations (asyncinvoke/): SageMaker's InvokeEndpointAsync, AsyncInferenceConfig's options.
    async_output_path: str = _opt(
        "",
        "S3 URI async results are written to (S3OutputPath), as <uri>/<id>.out; S3 settings as for the models"
        " (empty: InvokeEndpointAsync is refused)",
        _parse_s3_uri,
        "S3_URI",
    )
    async_failure_path: str = _opt(
        "",
        "S3 URI async failures are written to (S3FailurePath), as <uri>/<id>-error.out (empty: --async-output-path)",
        _parse_s3_uri,
        "S3_URI",
    )
    async_default_model: str = _opt(
        "",
        "TargetModel of an async request whose CustomAttributes name none with TargetModel=<key> (empty: such a"
        " request is refused)",
        str,
        "NAME",
    )
    async_max_queue: int = _opt(
        1000,
        "async requests accepted and not finished at most (kept in --cache-dir across restarts); past it"
        " InvokeEndpointAsync answers 503 ServiceUnavailable",
        _parse_positive,
        "N",
    )
    async_concurrency: int = _opt(
        2,
        "async requests run at once (MaxConcurrentInvocationsPerInstance); each holds its whole body in memory",
        _parse_positive,
        "N",
    )
    # Aliases of the model prefix (aliases.py): versions, traffic split, shadow, rollouts (openmme alias/rollout).
    alias_refresh: float = _opt(
        2.0,
        "seconds between reads of the prefix's alias documents (.openmme/aliases/; a ListObjectsV2, and a GetObject"
        " per changed alias): how soon an alias change reaches this endpoint, plus its new versions' load (0: no"
        " aliases)",
        _parse_seconds,
        "SECONDS",
    )
    alias_max_staleness: float = _opt(
        0.0,
        "answer alias invocations with 503 once the alias documents could not be read from S3 for this long (0: the"
        " last ones read keep serving however long S3 is away)",
        _parse_seconds,
        "SECONDS",
    )
    shadow_concurrency: int = _opt(
        4,
        "mirrored invocations of shadow versions running at once; past it an invocation is not mirrored",
        _parse_positive,
        "N",
    )
    # Inference pipelines (pipeline_manifest.py, pipelines.py): a TargetModel ending in .pipeline.json runs its steps.
    pipeline: str = _opt(
        "",
        "a pipeline manifest (a key of the prefix ending in .pipeline.json, with a {TargetModel} step) that every"
        " invocation of a TargetModel that is no pipeline runs through, as SageMaker's PipelineModel([featurizer,"
        " MultiDataModel]) (empty: a TargetModel runs alone)",
        _parse_pipeline_name,
        "NAME.pipeline.json",
    )
    pipeline_file: tuple[tuple[str, Path], ...] = _opt(
        (),
        "serve the local manifest file PATH as the pipeline NAME, before S3's (to try a pipeline before publishing"
        " it: openmme pipeline publish does); repeatable",
        _parse_pipeline_file,
        "NAME.pipeline.json=PATH",
        repeated=True,
    )
    # Per-model dependencies (environments.py): a script model's code/requirements.txt, built into an environment
    # of its own, shared by the models that name the same requirements.
    environment_build_timeout: float = _opt(
        600.0,
        "seconds pip may take to build the environment of a model's code/requirements.txt; past it pip is stopped"
        " and the model's requests get a ModelError (424)",
        _parse_interval,
        "SECONDS",
    )
    environments_budget: int = _opt(
        5 * 1024**3,
        "most bytes of built environments kept in <cache-dir>/environments (kept across restarts); the least"
        " recently used ones no loaded model uses are deleted to make room, and one that still does not fit fails"
        " its model's load (0: no limit)",
        parse_bytes,
    )
    wheelhouse: Path | None = _opt(  # noqa: RUF009  (an immutable default)
        None,
        "build environments only from the wheels in this directory (pip --no-index --find-links DIR), for machines"
        " without a package index (unset: pip's own settings, PIP_INDEX_URL or pip.conf, say where packages come"
        " from)",
        Path,
        "DIR",
    )
    log_level: str = _opt(
        "INFO",
        "the least severe of the text lines on stderr to show (JSON request and event lines go to stdout)",
        _parse_log_level,
    )

    @property
    def front_count(self) -> int:
        """Front processes: ``--fronts``, or one per two CPU cores (one with ``--auth-refuse-replays``: a replay
        must reach the process that saw the first request)."""
        if self.fronts or self.auth_refuse_replays:
            return self.fronts or 1
        return max(1, usable_cores() // 2)

    @property
    def models_dir(self) -> Path:
        """MMS's model store: one extracted model directory per loaded or cached model."""
        return self.cache_dir / "models"

    @property
    def staging_dir(self) -> Path:
        """Downloads and extractions in progress; renamed into ``models_dir`` when complete."""
        return self.cache_dir / "staging"

    @property
    def environments_dir(self) -> Path:
        """Built environments of models' code/requirements.txt, one per set of requirements; kept across restarts
        (unlike the model store)."""
        return self.cache_dir / "environments"

    @classmethod
    def from_sources(cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from command-line arguments over environment variables over defaults."""
        environ = os.environ if environ is None else environ
        parser = cls.argument_parser()
        namespace = parser.parse_args(argv)
        values: dict[str, Any] = {}
        for spec in dataclasses.fields(cls):
            raw, source = getattr(namespace, spec.name), "--" + spec.name.replace("_", "-")
            if raw is None:
                raw, source = environ.get(ENV_PREFIX + spec.name.upper()), ENV_PREFIX + spec.name.upper()
                if raw is not None and spec.metadata["repeated"]:
                    raw = [item.strip() for item in raw.split(",") if item.strip()]
            if raw is None and spec.name == "port":
                raw, source = environ.get("SAGEMAKER_BIND_TO_PORT"), "SAGEMAKER_BIND_TO_PORT"
            if raw is None:
                continue
            parse = spec.metadata["parse"]
            try:
                if spec.metadata["repeated"]:
                    values[spec.name] = tuple(parse(item) for item in raw)
                else:
                    values[spec.name] = parse(raw) if parse else raw
            except ValueError as exc:
                # int's and float's own words ("invalid literal for int() with base 10: 'x'") say less.
                said = f"not a {'whole ' if parse is int else ''}number: {raw!r}" if parse in (int, float) else exc
                parser.error(f"{source}: {said}")
        return cls(**values)

    @classmethod
    def argument_parser(cls, parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
        """The ``serve`` flags, one per field; unset flags stay None so the environment can fill them."""
        parser = parser or OneLineErrors(prog="openmme serve", epilog=_HELP_EPILOG)
        for spec in dataclasses.fields(cls):
            env = ENV_PREFIX + spec.name.upper()
            help_text = f"{spec.metadata['help']} [env {env}; default {_shown_default(spec)}]"
            flag = "--" + spec.name.replace("_", "-")
            if isinstance(spec.default, bool):
                parser.add_argument(flag, dest=spec.name, action="store_const", const="1", help=help_text)
            elif spec.metadata["repeated"]:
                help_text = help_text.replace("[env ", "[env (comma-separated) ", 1)
                parser.add_argument(flag, dest=spec.name, action="append", metavar=_metavar(spec), help=help_text)
            else:
                parser.add_argument(flag, dest=spec.name, metavar=_metavar(spec), help=help_text)
        return parser

"""Check a model before publishing it: load it with the handler openmme will use, and optionally answer a sample.

The archive is extracted with the endpoint's own safe extraction and limits, the handler is chosen with the
endpoint's own ``choose_handler``, and the handler service is driven in-process the way an MMS worker drives it:
``mms.service.Service`` builds the real ``Context``, ``handle(None, context)`` loads the model, and a sample
request goes through ``Service.predict`` in MMS's batch format (raw bytes bodies, as openmme configures MMS), whose
response frame is parsed back. What the endpoint would refuse is refused here, with the same one-line reason.

The handler services (and so xgboost, or the toolkit and the user's ``code/inference.py``) are imported only when
a check runs. A user script runs in this process; ``sys.path`` and the modules imported from the model directory
are restored afterwards. Both that and the capture of the handlers' log records change process-wide state, so
checks run one at a time (publishing from several threads still uploads in parallel).
"""

from __future__ import annotations

import contextlib
import io
import logging
import struct
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from openmme.endpoint.extract import ArchiveRefused, ExtractLimits, extract_archive
from openmme.endpoint.settings import Settings
from openmme.publish._errors import ModelCheckFailed

__all__ = [
    "CheckReport",
    "MmsReply",
    "check_archive",
    "check_model_dir",
    "content_type_for",
    "default_limits",
    "parse_predict_response",
]

# The handler services' loggers: captured during a check, so their warnings become the report's.
_CAPTURED_LOGGERS = ("openmme.handlers", "mms", "sagemaker_inference")
_SAMPLE_TYPES = {
    ".csv": "text/csv",
    ".json": "application/json",
    ".libsvm": "text/libsvm",
    ".svm": "text/libsvm",
    ".npy": "application/x-npy",
}
_SHOWN_RESPONSE_CHARS = 120
_ONE_CHECK_AT_A_TIME = threading.Lock()


@dataclass(frozen=True)
class MmsReply:
    """One response of an MMS batch, as the Java front would receive it from the worker."""

    status: int
    phrase: str
    content_type: str | None
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class CheckReport:
    """What a successful check found."""

    handler: str
    """The MMS handler the endpoint will register the model with (``module:function``)."""
    sample_reply: MmsReply | None = None
    """The handler's answer to the sample request, when one was given (always status 200)."""
    warnings: tuple[str, ...] = field(default=())
    """Warnings the handler logged while loading or answering (e.g. an ignored ``code/requirements.txt``)."""

    @property
    def handler_name(self) -> str:
        from openmme.handlers import SCRIPT_HANDLER

        return "user-script (code/inference.py)" if self.handler == SCRIPT_HANDLER else "XGBoost"

    def summary(self) -> str:
        """One line for the operator: the handler, and the sample's answer if there was one."""
        text = f"loads with the {self.handler_name} handler"
        if self.sample_reply is not None:
            body = self.sample_reply.body.decode("utf-8", errors="replace").replace("\n", " | ")
            if len(body) > _SHOWN_RESPONSE_CHARS:
                body = body[: _SHOWN_RESPONSE_CHARS - 3] + "..."
            text += f"; the sample answered {self.sample_reply.status} ({self.sample_reply.content_type}): {body}"
        return text


def default_limits() -> ExtractLimits:
    """The extraction limits ``openmme serve`` uses unless told otherwise."""
    return ExtractLimits(Settings.max_archive_bytes, Settings.max_archive_members, Settings.max_archive_ratio)


def content_type_for(sample: Path) -> str:
    """The Content-Type a sample file is sent with, from its suffix (CSV unless it says otherwise)."""
    return _SAMPLE_TYPES.get(sample.suffix.lower(), "text/csv")


def check_archive(
    archive: Path,
    *,
    sample: bytes | None = None,
    content_type: str = "text/csv",
    accept: str | None = None,
    limits: ExtractLimits | None = None,
) -> CheckReport:
    """Extract ``archive`` as the endpoint would and check the model in it (see ``check_model_dir``)."""
    with tempfile.TemporaryDirectory(prefix="openmme-check-") as scratch:
        model_dir = Path(scratch) / "model"
        try:
            extract_archive(archive, model_dir, limits or default_limits())
        except ArchiveRefused as exc:
            raise ModelCheckFailed(f"the endpoint would refuse {archive.name}: {exc}") from exc
        return check_model_dir(model_dir, sample=sample, content_type=content_type, accept=accept)


def check_model_dir(
    model_dir: Path, *, sample: bytes | None = None, content_type: str = "text/csv", accept: str | None = None
) -> CheckReport:
    """Load the extracted model at ``model_dir`` with its handler; with ``sample``, also predict on it.

    Raises ModelCheckFailed with the one-line reason the endpoint would give (no handler fits, the model does
    not load, the sample is refused).
    """
    from openmme.handlers import DENSE, UnsupportedArchive, choose_handler, choose_hosting

    try:
        handler = choose_handler(model_dir)
        choose_hosting(model_dir, handler, DENSE)  # a malformed openmme.json fails here, not at the endpoint
    except UnsupportedArchive as exc:
        raise ModelCheckFailed(f"{exc}{_layout_hint(model_dir)}") from exc
    warnings: list[str] = []
    with _ONE_CHECK_AT_A_TIME, _captured_logs(warnings), _restored_imports(model_dir):
        service = _load(handler, model_dir)
        reply = _predict(service, sample, content_type, accept) if sample is not None else None
    return CheckReport(handler, reply, tuple(warnings))


def _load(handler: str, model_dir: Path) -> Any:
    """A fresh handler service with the model loaded, inside an MMS ``Service`` as a worker builds it."""
    from mms.service import Service

    from openmme.handlers import SCRIPT_HANDLER
    from openmme.handlers._mms import load_error_message

    if handler == SCRIPT_HANDLER:
        from openmme.handlers.script_service import ScriptService

        handler_service: Any = ScriptService()
    else:
        from openmme.handlers.xgboost_service import XGBoostService

        handler_service = XGBoostService()
    # Service(model_name, model_dir, manifest, entry_point, gpu, batch_size), as MmsModelLoader builds it.
    service = Service("openmme-check", str(model_dir), None, handler_service.handle, None, 1)
    try:
        handler_service.handle(None, service.context)
    except Exception as exc:
        # The same sentence the endpoint reports for a model that fails to load.
        message = load_error_message(exc)
        if "ModuleNotFoundError" in message and (model_dir / "code" / "requirements.txt").is_file():
            message += (
                " (code/requirements.txt is installed by the endpoint, into an environment of the model's own, not"
                " into this process: publish with --skip-check, or install the requirements here first)"
            )
        raise ModelCheckFailed(f"the model does not load: {message}") from exc
    return service


def _predict(service: Any, sample: bytes, content_type: str, accept: str | None) -> MmsReply:
    headers = [{"name": b"Content-Type", "value": content_type.encode()}]
    if accept:
        headers.append({"name": b"Accept", "value": accept.encode()})
    request = {
        "requestId": b"openmme-check",
        "headers": headers,
        # MMS's Java front records the body's media type without parameters.
        "parameters": [{"name": "body", "contentType": content_type.split(";")[0].strip(), "value": sample}],
    }
    try:
        (reply,) = parse_predict_response(service.predict([request]))
    except ValueError as exc:
        raise ModelCheckFailed(f"the sample request failed: {exc}") from exc
    if reply.status != 200:
        message = reply.body.decode("utf-8", errors="replace").strip()
        raise ModelCheckFailed(f"the sample request failed with {reply.status}: {message}")
    return reply


def parse_predict_response(frame: bytes) -> list[MmsReply]:
    """Parse what ``mms.protocol.otf_message_handler.create_predict_response`` encodes.

    ValueError when MMS failed the whole batch (the handler raised instead of answering).
    """
    stream = io.BytesIO(frame)

    def integer() -> int:
        (value,) = struct.unpack("!i", stream.read(4))
        return int(value)

    def sized() -> bytes:
        return stream.read(integer())

    batch_code, batch_message = integer(), sized().decode()
    if batch_code != 200:
        raise ValueError(f"MMS failed the batch with {batch_code}: {batch_message}")
    replies = []
    while (length := integer()) != -1:
        stream.read(length)  # the request id
        content_type = sized().decode() or None
        status, phrase = integer(), sized().decode()
        headers = {sized().decode(): sized().decode() for _ in range(integer())}
        replies.append(MmsReply(status, phrase, content_type, headers, sized()))
    return replies


def _layout_hint(model_dir: Path) -> str:
    """Why a directory the user meant as a model may not look like one, for the two usual mistakes."""
    entries = [path for path in model_dir.iterdir() if not path.name.startswith(".")]
    if len(entries) == 1 and entries[0].is_dir():
        return (
            f"; everything is inside {entries[0].name}/: pack that directory's contents, not the directory "
            f"(tar -czf model.tar.gz -C {entries[0].name} .)"
        )
    if (model_dir / "inference.py").is_file():
        return "; inference.py is at the root, but SageMaker and openmme load code/inference.py: move it to code/"
    return ""


class _ListHandler(logging.Handler):
    def __init__(self, messages: list[str]) -> None:
        super().__init__(logging.WARNING)
        self.messages = messages

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage().splitlines()[0] if record.getMessage() else record.levelname)


@contextlib.contextmanager
def _captured_logs(messages: list[str]) -> Iterator[None]:
    """The handlers' warnings go into ``messages`` instead of stderr (the check reports them itself)."""
    handler = _ListHandler(messages)
    saved = []
    for name in _CAPTURED_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.propagate))
        logger.addHandler(handler)
        logger.propagate = False
    try:
        yield
    finally:
        for logger, propagate in saved:
            logger.removeHandler(handler)
            logger.propagate = propagate


@contextlib.contextmanager
def _restored_imports(model_dir: Path) -> Iterator[None]:
    """Undo what loading a user script does to this process: its ``code/`` on sys.path, its modules imported."""
    saved_path = list(sys.path)
    before = set(sys.modules)
    root = model_dir.resolve()
    try:
        yield
    finally:
        sys.path[:] = saved_path
        for name in set(sys.modules) - before:
            origin = getattr(sys.modules[name], "__file__", None)
            if name.startswith("openmme_user_") or (origin and Path(origin).resolve().is_relative_to(root)):
                del sys.modules[name]

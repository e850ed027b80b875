"""openmme's MMS handler services, and how the front picks one for an extracted model archive.

The front imports this module to choose a handler, so it stays cheap: no xgboost, numpy or
sagemaker_inference here. The services themselves live in their own modules, which MMS imports by the
dotted names below inside each model's worker process:

- ``xgboost_service``: a bare XGBoost booster (what SageMaker's XGBoost training writes);
- ``script_service``: an archive with ``code/inference.py`` (``model_fn`` & co, SageMaker's script mode);
- ``dense_service``: a shard that holds many boosters in one warm worker (``--hosting dense``); the front
  names the model of each request in ``MODEL_HEADER`` and loads or unloads models with ``OP_HEADER``.

Where a model runs is its *hosting*: ``dense`` (a booster shares a shard with other boosters) or
``isolated`` (its own MMS model and worker processes). ``choose_hosting`` decides per archive, and
``choose_model_cache`` whether the model stays cached after a call (SageMaker's ModelCacheSetting).

Every failed request a handler answers carries ``ERROR_HEADER: 1``, an HTTP status (400 bad input,
415 unsupported Content-Type or Accept, 500 model failure) and a one-line plain-text body.
"""

from __future__ import annotations

import json
import pathlib

__all__ = [
    "BOOSTER_FILE_NAME",
    "BOOSTER_SUFFIXES",
    "DENSE",
    "DENSE_HANDLER",
    "ERROR_HEADER",
    "HOSTINGS",
    "ISOLATED",
    "MODEL_CACHE_SETTINGS",
    "MODEL_HEADER",
    "OP_HEADER",
    "SCRIPT_HANDLER",
    "SETTINGS_FILE_NAME",
    "XGBOOST_HANDLER",
    "UnsupportedArchive",
    "choose_handler",
    "choose_hosting",
    "choose_model_cache",
    "find_booster",
]

XGBOOST_HANDLER = "openmme.handlers.xgboost_service:handle"
SCRIPT_HANDLER = "openmme.handlers.script_service:handle"
DENSE_HANDLER = "openmme.handlers.dense_service:handle"

DENSE = "dense"
ISOLATED = "isolated"
HOSTINGS = (DENSE, ISOLATED)

# Requests to a dense shard: the model (its directory's name in the model store) and, for anything but a
# prediction, the operation ("load", "unload" or "list").
MODEL_HEADER = "X-Openmme-Model"
OP_HEADER = "X-Openmme-Op"

# An optional file at an archive's root with openmme's settings for that one model: {"hosting": "isolated"},
# {"modelCache": "disabled"}, {"environment": {"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "text/csv"}}.
SETTINGS_FILE_NAME = "openmme.json"
# The answer's type when a request asks none: set by the endpoint's environment, or by one archive's openmme.json.
DEFAULT_ACCEPT_VARIABLE = "SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT"
# SageMaker's ModelCacheSetting values (MultiModelConfig), as openmme spells them; an archive may write either case.
MODEL_CACHE_SETTINGS = ("enabled", "disabled")

# Set (to "1") on every response a handler answers with an error, so the front can tell a model's
# failure apart from MMS's own errors (which never carry it).
ERROR_HEADER = "X-Openmme-Model-Error"

# The file SageMaker's XGBoost training jobs write at the root of model.tar.gz.
BOOSTER_FILE_NAME = "xgboost-model"
BOOSTER_SUFFIXES = (".json", ".ubj", ".bst", ".model", ".xgb", ".bin")

_SCRIPT_PATH = pathlib.PurePosixPath("code", "inference.py")


class UnsupportedArchive(ValueError):
    """Nothing in the extracted archive can be served; the message says what was looked for."""


def find_booster(model_dir: pathlib.Path) -> pathlib.Path:
    """Return the XGBoost model file of an extracted archive.

    ``xgboost-model`` at the root wins; otherwise the root must hold exactly one (non-hidden) file whose
    suffix is one of ``BOOSTER_SUFFIXES``, ``openmme.json`` (settings, see ``choose_hosting``) aside. Raises
    UnsupportedArchive when there is none or several.
    """
    model_dir = pathlib.Path(model_dir)
    if not model_dir.is_dir():
        raise UnsupportedArchive(f"model directory {model_dir} does not exist")
    named = model_dir / BOOSTER_FILE_NAME
    if named.is_file():
        return named
    candidates = sorted(
        path
        for path in model_dir.iterdir()
        if not path.name.startswith(".")
        and path.name != SETTINGS_FILE_NAME
        and path.suffix.lower() in BOOSTER_SUFFIXES
        and path.is_file()
    )
    if len(candidates) == 1:
        return candidates[0]
    looked_for = f"'{BOOSTER_FILE_NAME}' or exactly one file ending in {', '.join(BOOSTER_SUFFIXES)}"
    if not candidates:
        raise UnsupportedArchive(f"no XGBoost model file at the archive root (looked for {looked_for})")
    names = ", ".join(path.name for path in candidates)
    raise UnsupportedArchive(
        f"{len(candidates)} candidate XGBoost model files at the archive root ({names}); "
        f"name the booster '{BOOSTER_FILE_NAME}' or keep only one"
    )


def choose_handler(model_dir: pathlib.Path) -> str:
    """Return the MMS handler (``module:function``) that serves the extracted archive at ``model_dir``.

    ``code/inference.py`` means a user script; otherwise a booster file (see ``find_booster``) means the
    XGBoost service. Raises UnsupportedArchive when neither is there.
    """
    model_dir = pathlib.Path(model_dir)
    if model_dir.joinpath(_SCRIPT_PATH).is_file():
        return SCRIPT_HANDLER
    try:
        find_booster(model_dir)
    except UnsupportedArchive as exc:
        raise UnsupportedArchive(f"unsupported model archive: no {_SCRIPT_PATH}, and {exc}") from exc
    return XGBOOST_HANDLER


def choose_hosting(model_dir: pathlib.Path, handler: str, default: str) -> str:
    """Where the model at ``model_dir`` runs: ``dense`` or ``isolated``.

    A user script (``SCRIPT_HANDLER``) is always isolated: its own imports and globals must not share a
    process with other tenants. A booster follows the archive's ``openmme.json`` ``{"hosting": ...}`` if it
    has one, else ``default`` (the endpoint's ``--hosting``). Raises UnsupportedArchive for a malformed file.
    """
    if handler == SCRIPT_HANDLER:
        return ISOLATED
    return str(_archive_settings(model_dir).get("hosting", default))


def choose_model_cache(model_dir: pathlib.Path, default: str) -> str:
    """Whether the model at ``model_dir`` stays cached after a call: ``enabled``, or ``disabled`` (unloaded and
    deleted from disk after each call, as SageMaker's ``ModelCacheSetting: Disabled``).

    The archive's ``openmme.json`` ``{"modelCache": "Enabled" | "Disabled"}`` (any case) if it has one, else
    ``default`` (the endpoint's ``--model-cache``). Raises UnsupportedArchive for a malformed file.
    """
    return str(_archive_settings(model_dir).get("modelCache", default))


def choose_default_accept(model_dir: pathlib.Path) -> str | None:
    """The Accept the model at ``model_dir`` answers in when a request asks none (or ``*/*``): the archive's
    ``openmme.json`` ``{"environment": {"SAGEMAKER_DEFAULT_INVOCATIONS_ACCEPT": "text/csv"}}``, as a SageMaker
    container's environment sets it; None: the handler's own default (the endpoint's environment). Raises
    UnsupportedArchive for a malformed file."""
    return _archive_settings(model_dir).get(DEFAULT_ACCEPT_VARIABLE)


def _archive_settings(model_dir: pathlib.Path) -> dict[str, str]:
    """The archive's ``openmme.json``, checked (``{}`` without one): ``hosting`` and ``modelCache`` as openmme
    spells their values, and the default accept its ``environment`` sets. Raises UnsupportedArchive for a
    malformed file."""
    settings_file = pathlib.Path(model_dir, SETTINGS_FILE_NAME)
    if not settings_file.is_file():
        return {}
    try:
        settings = json.loads(settings_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UnsupportedArchive(f"{SETTINGS_FILE_NAME} is not valid JSON: {exc}") from exc
    if not isinstance(settings, dict):
        raise UnsupportedArchive(f'{SETTINGS_FILE_NAME} must be a JSON object, e.g. {{"hosting": "{ISOLATED}"}}')
    unknown = sorted(set(settings) - {"hosting", "modelCache", "environment"})
    if unknown:
        raise UnsupportedArchive(
            f"{SETTINGS_FILE_NAME} has unknown settings {', '.join(unknown)}; it takes hosting, modelCache and"
            " environment"
        )
    checked: dict[str, str] = {}
    if "hosting" in settings:
        if settings["hosting"] not in HOSTINGS:
            raise UnsupportedArchive(
                f'{SETTINGS_FILE_NAME} must be a JSON object whose "hosting" is "{DENSE}" or "{ISOLATED}"'
            )
        checked["hosting"] = settings["hosting"]
    if "modelCache" in settings:
        value = settings["modelCache"]
        if not isinstance(value, str) or value.lower() not in MODEL_CACHE_SETTINGS:
            raise UnsupportedArchive(f'{SETTINGS_FILE_NAME}: "modelCache" must be "Enabled" or "Disabled"')
        checked["modelCache"] = value.lower()
    if "environment" in settings:
        checked.update(_environment(settings["environment"]))
    return checked


def _environment(environment: object) -> dict[str, str]:
    """The ``environment`` of ``openmme.json``: the one variable a model of a shared endpoint may set."""
    if not isinstance(environment, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in environment.items()
    ):
        raise UnsupportedArchive(f'{SETTINGS_FILE_NAME}: "environment" must be an object of strings')
    unknown = sorted(set(environment) - {DEFAULT_ACCEPT_VARIABLE})
    if unknown:
        raise UnsupportedArchive(
            f'{SETTINGS_FILE_NAME}: "environment" sets {", ".join(unknown)}; a model of a shared endpoint may set'
            f" only {DEFAULT_ACCEPT_VARIABLE} (the rest of the environment is the endpoint's)"
        )
    accept = environment.get(DEFAULT_ACCEPT_VARIABLE)
    if accept is None:
        return {}
    if "/" not in accept or not accept.isprintable() or "," in accept:
        raise UnsupportedArchive(
            f"{SETTINGS_FILE_NAME}: {DEFAULT_ACCEPT_VARIABLE} must be one MIME type, not {accept!r}"
        )
    return {DEFAULT_ACCEPT_VARIABLE: accept}

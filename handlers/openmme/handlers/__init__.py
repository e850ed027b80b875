"""openmme's MMS handler services, and how the front picks one for an extracted model archive.

The front imports this module to choose a handler, so it stays cheap: no xgboost, numpy or
sagemaker_inference here. The services themselves live in their own modules, which MMS imports by the
dotted names below inside each model's worker process:

- ``xgboost_service``: a bare XGBoost booster (what SageMaker's XGBoost training writes);
- ``script_service``: an archive with ``code/inference.py`` (``model_fn`` & co, SageMaker's script mode).

Every failed request a handler answers carries ``ERROR_HEADER: 1``, an HTTP status (400 bad input,
415 unsupported Content-Type or Accept, 500 model failure) and a one-line plain-text body.
"""

from __future__ import annotations

import pathlib

__all__ = [
    "BOOSTER_FILE_NAME",
    "BOOSTER_SUFFIXES",
    "ERROR_HEADER",
    "SCRIPT_HANDLER",
    "XGBOOST_HANDLER",
    "UnsupportedArchive",
    "choose_handler",
    "find_booster",
]

XGBOOST_HANDLER = "openmme.handlers.xgboost_service:handle"
SCRIPT_HANDLER = "openmme.handlers.script_service:handle"

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
    suffix is one of ``BOOSTER_SUFFIXES``. Raises UnsupportedArchive when there is none or several.
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
        if not path.name.startswith(".") and path.suffix.lower() in BOOSTER_SUFFIXES and path.is_file()
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

"""The keys ``--auth sigv4`` accepts: an operator's key file and/or one key from the environment, each with the
TargetModel patterns it may invoke (the self-hosted twin of IAM's ``sagemaker:TargetModel`` condition key).

A key file is ``{"keys": [{"access_key_id": …, "secret_access_key": …, "allow": ["houston/*"]}]}``; an allow
pattern is a shell-style glob over the TargetModel (``*`` spans ``/``), and a key allowed ``*`` is unrestricted:
it may also list, load and unload models and read metrics. Errors never quote a secret.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import re
import stat
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from openmme.endpoint.settings import Settings

__all__ = ["ACCESS_KEY_ENV", "SECRET_KEY_ENV", "AccessKey", "AuthConfigError", "KeyStore", "load_keys"]

log = logging.getLogger(__name__)

ACCESS_KEY_ENV = "OPENMME_AUTH_ACCESS_KEY_ID"
SECRET_KEY_ENV = "OPENMME_AUTH_SECRET_ACCESS_KEY"


class AuthConfigError(ValueError):
    """Authentication is configured wrongly (or not at all where it must be): ``openmme serve`` will not start."""


@dataclass(frozen=True)
class AccessKey:
    """One key pair and the TargetModel patterns (shell-style globs, ``*`` spans ``/``) it may invoke."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    allow: tuple[str, ...] = ("*",)

    def may_invoke(self, target: str) -> bool:
        return any(fnmatch.fnmatchcase(target, pattern) for pattern in self.allow)

    @property
    def unrestricted(self) -> bool:
        """Allowed every model: such a key may also list, load and unload models and read metrics."""
        return "*" in self.allow


class KeyStore:
    """The keys requests may be signed with, by access key id."""

    def __init__(self, keys: Iterable[AccessKey]) -> None:
        self._keys: dict[str, AccessKey] = {}
        for key in keys:
            if key.access_key_id in self._keys:
                raise AuthConfigError(f"access key {key.access_key_id} is given twice")
            self._keys[key.access_key_id] = key
        if not self._keys:
            raise AuthConfigError("no access keys: --auth sigv4 would refuse every request")

    def get(self, access_key_id: str) -> AccessKey | None:
        return self._keys.get(access_key_id)

    def __len__(self) -> int:
        return len(self._keys)

    @classmethod
    def from_json(cls, text: str, source: str) -> KeyStore:
        """``{"keys": [{"access_key_id": …, "secret_access_key": …, "allow": ["houston/*"]}]}``."""
        try:
            document = json.loads(text)
        except ValueError as exc:  # the message names a position, never the file's content
            raise AuthConfigError(f"{source} is not JSON: {exc}") from None
        if not isinstance(document, dict) or set(document) != {"keys"} or not isinstance(document["keys"], list):
            raise AuthConfigError(f'{source} must be a JSON object {{"keys": [...]}}')
        return cls(_key_from(entry, f"{source} key #{index + 1}") for index, entry in enumerate(document["keys"]))

    def __iter__(self) -> Iterator[AccessKey]:
        return iter(self._keys.values())


def _key_from(entry: object, where: str) -> AccessKey:
    fields = {"access_key_id", "secret_access_key", "allow"}
    if not isinstance(entry, dict) or set(entry) != fields:
        raise AuthConfigError(f"{where} must have exactly the fields {sorted(fields)}")
    key_id, secret, allow = entry["access_key_id"], entry["secret_access_key"], entry["allow"]
    if not isinstance(key_id, str) or not re.fullmatch(r"[\x21-\x7e]+", key_id) or "/" in key_id:
        raise AuthConfigError(f"{where}: access_key_id must be printable ASCII without spaces or '/'")
    if not isinstance(secret, str) or not secret:
        raise AuthConfigError(f"{where} ({key_id}): secret_access_key must be a non-empty string")
    if not isinstance(allow, list) or not allow or not all(isinstance(p, str) and p for p in allow):
        raise AuthConfigError(f'{where} ({key_id}): allow must be a non-empty list of patterns (["*"]: every model)')
    return AccessKey(key_id, secret, tuple(allow))


def load_keys(settings: Settings, environ: Mapping[str, str]) -> KeyStore | None:
    """The keys ``--auth sigv4`` checks against: ``--auth-keys-file`` and/or one key from the environment (allowed
    every model). None without ``--auth``; keys without ``--auth`` are an error rather than silently unused."""
    key_id, secret = environ.get(ACCESS_KEY_ENV, ""), environ.get(SECRET_KEY_ENV, "")
    if not settings.auth:
        if settings.auth_keys_file is not None or key_id or secret:
            given = "--auth-keys-file" if settings.auth_keys_file is not None else ACCESS_KEY_ENV
            raise AuthConfigError(f"{given} is set but --auth is not: pass --auth sigv4 to check signatures")
        return None
    keys: list[AccessKey] = []
    if settings.auth_keys_file is not None:
        path = settings.auth_keys_file
        try:
            text = path.read_text()
            mode = path.stat().st_mode
        except OSError as exc:
            raise AuthConfigError(f"cannot read --auth-keys-file {path}: {exc.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s holds secret keys but others may read it: chmod 600 it", path)
        keys.extend(KeyStore.from_json(text, str(path)))
    if key_id or secret:
        if not (key_id and secret):
            raise AuthConfigError(f"{ACCESS_KEY_ENV} and {SECRET_KEY_ENV} must be set together")
        keys.append(_key_from({"access_key_id": key_id, "secret_access_key": secret, "allow": ["*"]}, ACCESS_KEY_ENV))
    if not keys:
        raise AuthConfigError(
            f"--auth sigv4 needs keys: --auth-keys-file PATH, or {ACCESS_KEY_ENV} and {SECRET_KEY_ENV}"
        )
    return KeyStore(keys)

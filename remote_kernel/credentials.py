"""Credentials: which server to reach and with which keypair, kept out of ``kernel.json``.

A secret key is never written into a kernelspec. :func:`resolve_credentials` takes the endpoint
and keypair from the Backend.AI SDK's environment variables (``BACKEND_ENDPOINT``,
``BACKEND_ACCESS_KEY``, ``BACKEND_SECRET_KEY``) or else from one user-scoped JSON file, readable
by its owner only (mode ``0600`` in a ``0700`` directory), which ``remote-kernel install``
writes::

    $XDG_CONFIG_HOME/remote-kernel/credentials.json     (default ~/.config/remote-kernel/...)
    %APPDATA%\\remote-kernel\\credentials.json            (Windows)

``REMOTE_KERNEL_CREDENTIALS`` overrides the path. Layout::

    {"default": "<endpoint>",
     "endpoints": {"<endpoint>": {"access_key": "...", "secret_key": "..."}}}

Stdlib imports only.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigurationError

ENV_ENDPOINT = "BACKEND_ENDPOINT"
ENV_ACCESS_KEY = "BACKEND_ACCESS_KEY"
ENV_SECRET_KEY = "BACKEND_SECRET_KEY"
CREDENTIALS_ENV = "REMOTE_KERNEL_CREDENTIALS"
ANY_ENDPOINT = ""  # the key of credentials saved without an endpoint: used for any endpoint

_BAD_FILE = (
    "The credentials file {path} is not valid JSON ({error}). Fix or delete it, then run "
    "`remote-kernel install` again with BACKEND_ACCESS_KEY and BACKEND_SECRET_KEY set."
)


def credentials_path() -> Path:
    """Where the user's credentials file lives (it may not exist yet)."""
    override = os.environ.get(CREDENTIALS_ENV)
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32" and os.environ.get("APPDATA"):
        base = Path(os.environ["APPDATA"])
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "remote-kernel" / "credentials.json"


def normalize_endpoint(endpoint: str | None) -> str:
    """The key an endpoint is stored under: no trailing slash; ``""`` for "any endpoint"."""
    return (endpoint or "").strip().rstrip("/")


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigurationError(_BAD_FILE.format(path=path, error=exc)) from exc
    if not isinstance(data, dict) or not isinstance(data.get("endpoints", {}), dict):
        raise ConfigurationError(_BAD_FILE.format(path=path, error="not an object"))
    return data


def save_credentials(endpoint: str | None, access_key: str, secret_key: str) -> Path:
    """Store a keypair for ``endpoint`` (``None``: any endpoint) and make it the default.

    The file is replaced atomically, with mode ``0600`` in a ``0700`` directory. Returns its path.
    """
    if not access_key or not secret_key:
        raise ConfigurationError("Both an access key and a secret key are needed to save them.")
    path = credentials_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # not ours to chmod (e.g. a shared parent): leave it
        path.parent.chmod(0o700)
    data = _read(path)
    key = normalize_endpoint(endpoint)
    endpoints: dict[str, Any] = dict(data.get("endpoints", {}))
    endpoints[key] = {"access_key": access_key, "secret_key": secret_key}
    data = {"default": key, "endpoints": endpoints}
    fd, tmp = tempfile.mkstemp(prefix=".credentials-", suffix=".json", dir=path.parent)
    try:
        os.chmod(tmp, 0o600)  # mkstemp already uses 0600; say it explicitly
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def load_credentials(endpoint: str | None = None) -> dict[str, str] | None:
    """The saved keypair for ``endpoint``, or ``None`` when there is none.

    Returns ``{"endpoint", "access_key", "secret_key"}``. Lookup order: the exact endpoint; then,
    for ``endpoint=None``, the default entry; then an entry saved for any endpoint.
    A malformed file raises :class:`~remote_kernel.errors.ConfigurationError` naming the file.
    """
    data = _read(credentials_path())
    endpoints = data.get("endpoints", {})
    candidates: list[str] = []
    if endpoint is not None:
        candidates.append(normalize_endpoint(endpoint))
    else:
        default = data.get("default")
        if isinstance(default, str):
            candidates.append(default)
    candidates.append(ANY_ENDPOINT)
    for key in candidates:
        entry = endpoints.get(key)
        if (
            isinstance(entry, dict)
            and isinstance(entry.get("access_key"), str)
            and isinstance(entry.get("secret_key"), str)
        ):
            found_endpoint = key or normalize_endpoint(endpoint)
            return {
                "endpoint": found_endpoint,
                "access_key": entry["access_key"],
                "secret_key": entry["secret_key"],
            }
    return None


@dataclass(frozen=True)
class Credentials:
    """Where to connect and with which keypair; ``repr`` never shows the secret."""

    endpoint: str = ""
    access_key: str = ""
    secret_key: str = field(default="", repr=False)
    source: str = ""


def resolve_credentials(
    endpoint: str | None = None, environ: Mapping[str, str] | None = None
) -> Credentials:
    """The endpoint and keypair: the SDK's environment variables, else the user's saved file.

    ``BACKEND_ENDPOINT``, ``BACKEND_ACCESS_KEY`` and ``BACKEND_SECRET_KEY`` win. Without an
    access key in the environment, the keypair saved for the endpoint (or the default one) in
    the credentials file is used. Missing values are empty strings: an empty access key means
    anonymous, unsigned requests.
    """
    env = os.environ if environ is None else environ
    endpoint = endpoint or env.get(ENV_ENDPOINT) or ""
    access = env.get(ENV_ACCESS_KEY) or ""
    secret = env.get(ENV_SECRET_KEY) or ""
    if access:
        return Credentials(endpoint, access, secret, "environment")
    saved = load_credentials(endpoint or None)
    if saved is None:
        return Credentials(endpoint, "", "", "")
    return Credentials(
        endpoint or saved["endpoint"], saved["access_key"], saved["secret_key"],
        str(credentials_path()),
    )  # fmt: skip

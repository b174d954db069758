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
class Origin:
    """Where a setting came from, and how to change it: the two halves of an error's hint.

    ``where`` completes "The endpoint comes from ..."; ``change`` completes "To change it, ...".
    """

    where: str
    change: str


#: Which setting of the kernel a value came from (see :func:`setting_origin`).
FROM_KERNELSPEC = "kernelspec"
FROM_CONFIG_FILE = "config-file"

_RESTART = "then restart the kernel"


def endpoint_origin(kind: str, path: Path | str | None = None) -> Origin:
    """Where the endpoint came from: ``kernelspec``, ``config-file``, ``environment``, ``file``
    (the credentials file at ``path``), ``argument`` or ``default``."""
    if kind == FROM_KERNELSPEC:
        return Origin(
            "the kernelspec's kernel.json (`--RemoteKernel.endpoint` in its argv), which "
            "BACKEND_ENDPOINT does not override",
            "run `remote-kernel install --endpoint=URL` again with the same --name (`remote-kernel "
            f"list` shows each kernelspec's endpoint), {_RESTART}",
        )
    if kind == FROM_CONFIG_FILE:
        return Origin(
            "a Jupyter config file (`c.RemoteKernel.endpoint` in jupyter_remote_kernel_config)",
            f"edit that line (`jupyter --paths` lists the config directories), {_RESTART}",
        )
    if kind == "environment":
        return Origin(
            f"the environment variable {ENV_ENDPOINT}",
            f"set {ENV_ENDPOINT} to the server's URL where the kernel is started (for Jupyter: "
            f"in the shell that starts it), {_RESTART}",
        )
    if kind == "file":
        return Origin(
            f"the credentials file {path} (the endpoint `remote-kernel install` saved)",
            f"run `remote-kernel install --endpoint=URL` again, or set {ENV_ENDPOINT}, {_RESTART}",
        )
    if kind == "argument":
        return Origin(
            "the `endpoint` argument",
            f"pass an http(s) URL, or none to use {ENV_ENDPOINT} or the credentials file",
        )
    return Origin(
        f"no setting (neither {ENV_ENDPOINT}, a kernelspec nor the credentials file names one): "
        "the default, where `remote-kernel serve` listens",
        f"set {ENV_ENDPOINT}, or run `remote-kernel install --endpoint=URL`, {_RESTART}",
    )


def keys_origin(kind: str, path: Path | str | None = None) -> Origin:
    """Where the keypair came from: ``kernelspec``, ``config-file``, ``environment``, ``file``
    (the credentials file at ``path``), ``argument`` or ``none`` (anonymous)."""
    fresh = "a keypair of this server (`remote-kernel keys create` on the server host prints one)"
    if kind in (FROM_KERNELSPEC, FROM_CONFIG_FILE):
        where = (
            "the kernelspec's kernel.json (`--RemoteKernel.access_key`/`secret_key` in its argv)"
            if kind == FROM_KERNELSPEC
            else "a Jupyter config file (`c.RemoteKernel.access_key`/`secret_key`)"
        )
        return Origin(
            where,
            f"remove them there (a secret does not belong in a settings file) and run "
            f"`remote-kernel install` again with {ENV_ACCESS_KEY} and {ENV_SECRET_KEY} set to "
            f"{fresh}, {_RESTART}",
        )
    if kind == "environment":
        return Origin(
            f"the environment variables {ENV_ACCESS_KEY} and {ENV_SECRET_KEY} (which win over "
            "the credentials file)",
            f"set both to {fresh} where the kernel is started, or unset them to use the "
            f"credentials file, {_RESTART}",
        )
    if kind == "file":
        return Origin(
            f"the credentials file {path}, written by `remote-kernel install`",
            f"run `remote-kernel install` again with {ENV_ACCESS_KEY} and {ENV_SECRET_KEY} set "
            f"to {fresh} (it rewrites the file), {_RESTART}",
        )
    if kind == "argument":
        return Origin(
            "the `access_key`/`secret_key` arguments",
            f"pass {fresh}, or none to use {ENV_ACCESS_KEY} or the credentials file",
        )
    return Origin(
        f"no {ENV_ACCESS_KEY} is set and the credentials file {credentials_path()} has no "
        "keypair for this endpoint",
        f"set {ENV_ACCESS_KEY} and {ENV_SECRET_KEY} to {fresh}, or save them with "
        f"`remote-kernel install`, {_RESTART}",
    )


def setting_origin(configurable: Any, name: str) -> str:
    """Which settings gave a traitlets ``configurable``'s ``name`` its value: ``kernelspec`` (the
    command line, i.e. kernel.json's argv), ``config-file``, or ``""`` (neither: the trait's
    default decided). Duck-typed, so this module keeps to the standard library."""
    app = getattr(configurable, "parent", None)
    cli = getattr(app, "cli_config", None) or {}
    section = type(configurable).__name__
    with contextlib.suppress(Exception):
        if name in cli.get(section, {}):
            return FROM_KERNELSPEC
    config = getattr(configurable, "config", None) or {}
    with contextlib.suppress(Exception):
        if name in config.get(section, {}):
            return FROM_CONFIG_FILE
    return ""


def origins_of(configurable: Any, creds: Credentials) -> tuple[Origin, Origin]:
    """(endpoint origin, keypair origin) of a configurable with ``endpoint``, ``access_key`` and
    ``secret_key`` settings whose defaults come from ``creds``: a value set in kernel.json or a
    config file names that place, any other the place ``creds`` found it."""
    endpoint_from = setting_origin(configurable, "endpoint")
    keys_from = setting_origin(configurable, "access_key") or setting_origin(
        configurable, "secret_key"
    )
    return (
        endpoint_origin(endpoint_from) if endpoint_from else creds.endpoint_origin,
        keys_origin(keys_from) if keys_from else creds.keys_origin,
    )


@dataclass(frozen=True)
class Credentials:
    """Where to connect and with which keypair; ``repr`` never shows the secret.

    ``endpoint_origin`` and ``keys_origin`` say where each came from, for error messages.
    """

    endpoint: str = ""
    access_key: str = ""
    secret_key: str = field(default="", repr=False)
    endpoint_origin: Origin = field(default_factory=lambda: endpoint_origin("default"))
    keys_origin: Origin = field(default_factory=lambda: keys_origin("none"))


def resolve_credentials(
    endpoint: str | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    endpoint_from: str = "argument",
) -> Credentials:
    """The endpoint and keypair: the SDK's environment variables, else the user's saved file.

    ``BACKEND_ENDPOINT``, ``BACKEND_ACCESS_KEY`` and ``BACKEND_SECRET_KEY`` win. Without an
    access key in the environment, the keypair saved for the endpoint (or the default one) in
    the credentials file is used. Missing values are empty strings: an empty access key means
    anonymous, unsigned requests. ``endpoint_from`` names where a given ``endpoint`` came from
    (an :func:`endpoint_origin` kind).
    """
    env = os.environ if environ is None else environ
    if endpoint:
        where = endpoint_origin(endpoint_from)
    elif env.get(ENV_ENDPOINT):
        endpoint, where = env[ENV_ENDPOINT], endpoint_origin("environment")
    else:
        endpoint, where = "", endpoint_origin("default")
    access = env.get(ENV_ACCESS_KEY) or ""
    secret = env.get(ENV_SECRET_KEY) or ""
    if access:
        return Credentials(endpoint, access, secret, where, keys_origin("environment"))
    saved = load_credentials(endpoint or None)
    if saved is None:
        return Credentials(endpoint, "", "", where, keys_origin("none"))
    path = credentials_path()
    if not endpoint and saved["endpoint"]:
        endpoint, where = saved["endpoint"], endpoint_origin("file", path)
    return Credentials(
        endpoint, saved["access_key"], saved["secret_key"], where, keys_origin("file", path)
    )

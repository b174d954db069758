"""Connection and authentication errors name the endpoint and where the credentials came from.

A user who sees "could not reach" or "refused the keypair" in a notebook must learn which setting
to change: kernel.json (an installed kernelspec pins its endpoint, so BACKEND_ENDPOINT changes
nothing), the environment, or the credentials file `remote-kernel install` wrote. The kernels
here are real processes started through jupyter_client, against a real server (``server``
fixture) or a port nobody listens on.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from remote_kernel.credentials import (
    ENV_ACCESS_KEY,
    ENV_ENDPOINT,
    origins_of,
    resolve_credentials,
    save_credentials,
)
from remote_kernel.errors import AuthenticationError, TransportError
from remote_kernel.signed_http import SignedHTTP

from .conftest import ServerProcess
from .kernel_helpers import execute, install_kernelspec, running_kernel


def _dead_endpoint() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def _no_keys_env(credentials: Path) -> dict[str, str]:
    """A kernel environment with no BACKEND_* keys and its own (maybe absent) credentials file."""
    return {
        "REMOTE_KERNEL_CREDENTIALS": str(credentials),
        "BACKEND_ACCESS_KEY": "",
        "BACKEND_SECRET_KEY": "",
    }


def _first_cell_error(name: str, tmp_path: Path, env: dict[str, str], argv: list[str]) -> str:
    """Install the kernelspec ``name``, run one cell, return the error the notebook shows."""
    install_kernelspec(name, env, prefix=tmp_path / "spec", extra_argv=argv)
    with running_kernel(name) as (_km, kc):
        reply, outputs = execute(kc, "print(1)", timeout=60)
    assert reply["status"] == "error", reply
    errors = [m["content"] for m in outputs if m["msg_type"] == "error"]
    assert errors, outputs
    return f"{errors[-1]['ename']}: {errors[-1]['evalue']}"


# -- in real kernels: what the notebook shows -----------------------------------------------------
def test_unreachable_endpoint_pinned_in_kernel_json_says_reinstall(tmp_path: Path) -> None:
    dead = _dead_endpoint()
    env = {**_no_keys_env(tmp_path / "none.json"), ENV_ENDPOINT: "http://127.0.0.1:1"}
    error = _first_cell_error(
        "remote-python-pinned", tmp_path, env, [f"--RemoteKernel.endpoint={dead}"]
    )
    assert error.startswith("TransportError") and f"could not reach {dead}" in error
    assert "kernel.json" in error and "BACKEND_ENDPOINT does not override" in error
    assert "remote-kernel install --endpoint=URL" in error
    assert "Set BACKEND_ENDPOINT" not in error and "127.0.0.1:1 " not in error


def test_unreachable_endpoint_from_the_environment_says_set_the_variable(tmp_path: Path) -> None:
    dead = _dead_endpoint()
    env = {**_no_keys_env(tmp_path / "none.json"), ENV_ENDPOINT: dead}
    error = _first_cell_error("remote-python-envep", tmp_path, env, [])
    assert f"could not reach {dead}" in error
    assert "the environment variable BACKEND_ENDPOINT" in error and "set BACKEND_ENDPOINT" in error
    assert "kernel.json" not in error


def test_wrong_secret_from_the_credentials_file_names_the_file(
    server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials.json"
    monkeypatch.setenv("REMOTE_KERNEL_CREDENTIALS", str(credentials))
    save_credentials(server.endpoint, server.access_key, "not-the-secret")
    error = _first_cell_error(
        "remote-python-badsecret", tmp_path, _no_keys_env(credentials),
        [f"--RemoteKernel.endpoint={server.endpoint}"],
    )  # fmt: skip
    assert error.startswith("AuthenticationError")
    assert f"{server.endpoint} refused the keypair with access key {server.access_key}" in error
    assert f"the credentials file {credentials}, written by `remote-kernel install`" in error
    assert "run `remote-kernel install` again" in error
    assert "not-the-secret" not in error and server.secret_key not in error


def test_unknown_key_from_the_environment_names_the_variables(
    server: ServerProcess, tmp_path: Path
) -> None:
    env = {
        **_no_keys_env(tmp_path / "none.json"),
        "BACKEND_ACCESS_KEY": "AKUNKNOWNKEY00000000",
        "BACKEND_SECRET_KEY": "some-secret",
    }
    error = _first_cell_error(
        "remote-python-unknownkey", tmp_path, env, [f"--RemoteKernel.endpoint={server.endpoint}"]
    )
    assert error.startswith("AuthenticationError")
    assert "refused the keypair with access key AKUNKNOWNKEY00000000" in error
    assert "the environment variables BACKEND_ACCESS_KEY and BACKEND_SECRET_KEY" in error
    assert "some-secret" not in error


def test_no_keypair_at_all_says_none_was_found(server: ServerProcess, tmp_path: Path) -> None:
    credentials = tmp_path / "absent.json"
    error = _first_cell_error(
        "remote-python-nokeys", tmp_path, _no_keys_env(credentials),
        [f"--RemoteKernel.endpoint={server.endpoint}"],
    )  # fmt: skip
    assert error.startswith("AuthenticationError")
    assert f"{server.endpoint} requires a keypair" in error and "not signed" in error
    assert f"the credentials file {credentials} has no keypair" in error


# -- the pieces, without processes ----------------------------------------------------------------
def test_resolve_credentials_says_where_each_value_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "credentials.json"
    monkeypatch.setenv("REMOTE_KERNEL_CREDENTIALS", str(path))
    creds = resolve_credentials(environ={})
    assert "default" in creds.endpoint_origin.where and str(path) in creds.keys_origin.where
    save_credentials("http://saved:1", "AKFILE", "sfile")
    creds = resolve_credentials(environ={})
    assert str(path) in creds.endpoint_origin.where and str(path) in creds.keys_origin.where
    env = {ENV_ENDPOINT: "http://env:2", ENV_ACCESS_KEY: "AKENV", "BACKEND_SECRET_KEY": "s"}
    creds = resolve_credentials(environ=env)
    assert creds.endpoint == "http://env:2" and "BACKEND_ENDPOINT" in creds.endpoint_origin.where
    assert "BACKEND_ACCESS_KEY" in creds.keys_origin.where
    creds = resolve_credentials("http://given:3", environ=env, endpoint_from="kernelspec")
    assert "kernel.json" in creds.endpoint_origin.where


class _Configured:
    """A stand-in for RemoteKernel under RemoteKernelApp: settings from argv and a config file."""

    def __init__(self, cli: dict[str, Any], config: dict[str, Any]) -> None:
        self.parent = type("App", (), {"cli_config": {"_Configured": cli}})()
        self.config = {"_Configured": {**config, **cli}}


def test_settings_from_kernel_json_or_a_config_file_name_that_place() -> None:
    creds = resolve_credentials(
        "http://x:1", environ={ENV_ACCESS_KEY: "AK", "BACKEND_SECRET_KEY": "s"}
    )
    endpoint, keys = origins_of(_Configured({"endpoint": "http://x:1"}, {}), creds)
    assert "kernel.json" in endpoint.where and "environment variables" in keys.where
    endpoint, keys = origins_of(_Configured({}, {"endpoint": "u", "access_key": "AK"}), creds)
    assert "config file" in endpoint.where and "config file" in keys.where


async def test_client_errors_name_the_sources(tmp_path: Path) -> None:
    dead = _dead_endpoint()
    async with SignedHTTP(dead, "", "", retries=0) as http:
        with pytest.raises(TransportError, match="the `endpoint` argument"):
            await http._request("GET", "/")


async def test_auth_error_keeps_what_the_server_said(server: ServerProcess) -> None:
    async with SignedHTTP(server.endpoint, server.access_key, "wrong", retries=0) as http:
        with pytest.raises(AuthenticationError) as info:
            await http._request("GET", "/session")
    assert info.value.server_msg == "HMAC signature mismatch"
    assert "HMAC signature mismatch" in str(info.value) and server.access_key in str(info.value)

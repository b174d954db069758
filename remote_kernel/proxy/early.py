"""The remote session, asked for while the kernel process is still starting up.

``python -m remote_kernel -f {connection_file}`` spends about 0.4 s importing ipykernel, zmq and
aiohttp before the kernel's event loop runs and :class:`~remote_kernel.proxy.session.RemoteSession`
could ask for a session. :func:`begin`, called first thing by ``__main__``, predicts the session
the kernel will ask for (endpoint, keypair, image, resources, environment and name, from the
command line, the environment and the credentials file, with the kernel's own defaults) and
creates it in a background thread, over ``http.client`` and signed as
:class:`~remote_kernel.client.RunLoopClient` signs, while the main thread imports.

The kernel then :func:`claim`\\ s it: when its settings (traits, with config files applied) are
what was predicted, :meth:`EarlySession.take` hands the created session, the server's version
probe and the remote ``kernel_info`` to its first creation; otherwise the early session is
destroyed and the kernel creates its own. The early thread never reports errors: a failed or
mismatched early start leaves the kernel's own creation to do the work and to say what is wrong.

No session is left behind: one that was created but never taken (mismatch, a kernel that failed
to start) is destroyed, by the thread or at interpreter exit.
"""

from __future__ import annotations

import ast
import atexit
import concurrent.futures
import contextlib
import http.client
import json
import logging
import os
import sys
import threading
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from .. import protocol as p
from ..auth import Keypair, sign_headers
from ..credentials import resolve_credentials

if TYPE_CHECKING:
    from ..client import RunLoopClient, SessionRef
    from .session import SessionSpec

log = logging.getLogger(__name__)

#: The kernel's defaults (see RemoteKernel's traits and signed_http; a test checks they agree).
DEFAULT_ENDPOINT = "http://127.0.0.1:8090"
DEFAULT_IMAGE = "python:3"
DEFAULT_STARTUP_TIMEOUT = 120.0
DEFAULT_CONNECT_TIMEOUT = 5.0
#: Seconds allowed to destroy an untaken session at exit.
EXIT_DESTROY_TIMEOUT = 2.0
#: Traits the prediction reads from ``--RemoteKernel.<name>=<value>``.
PREDICTED = ("endpoint", "access_key", "secret_key", "image", "resources", "environ",
             "session_name", "startup_timeout", "connect_timeout")  # fmt: skip
#: Command-line options after which the kernel's settings cannot be predicted.
UNPREDICTABLE = ("--config", "--profile", "--profile-dir", "--ipython-dir", "-h", "--help",
                 "--help-all", "--version")  # fmt: skip
CONFIG_FILES = ("jupyter_remote_kernel_config.py", "jupyter_remote_kernel_config.json")
PROFILE_FILES = ("ipython_config.py", "ipython_kernel_config.py", "ipython_config.json",
                 "ipython_kernel_config.json")  # fmt: skip


class HTTPStatusError(OSError):
    """The server answered with an HTTP error."""


@dataclass(frozen=True)
class Prediction:
    """The session the kernel is expected to ask for, and where."""

    endpoint: str
    access_key: str
    secret_key: str
    image: str
    name: str
    resources: dict[str, Any] = field(default_factory=dict)
    environ: dict[str, str] = field(default_factory=dict)
    startup_timeout: float = DEFAULT_STARTUP_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT

    def matches(self, endpoint: str, access_key: str, secret_key: str, spec: SessionSpec) -> bool:
        return (
            self.endpoint == _normal_endpoint(endpoint)
            and (self.access_key, self.secret_key) == (access_key, secret_key)
            and (self.image, self.name) == (spec.image, spec.name)
            and self.resources == spec.resources
            and self.environ == spec.environ
        )


@dataclass(frozen=True)
class Created:
    """What the early thread got: the probe's body and the create's answer."""

    probe: dict[str, Any]
    answer: dict[str, Any]


class EarlySession:
    """One early create, running in its own thread from :meth:`start`."""

    def __init__(self, prediction: Prediction) -> None:
        self.prediction = prediction
        self.future: concurrent.futures.Future[Created | None] = concurrent.futures.Future()
        self._lock = threading.Lock()
        self._taken = False  # handed to the kernel's session (which destroys it from then on)
        self._discarded = False  # to be destroyed (a mismatch, or exit before it was taken)
        self._destroying = False  # someone destroys it (exactly one party does)
        self._settled = threading.Event()  # the thread is done, a destroy of its own included
        self._api_version = p.API_VERSION

    def start(self) -> None:
        threading.Thread(target=self._run, name="remote-kernel-early-create", daemon=True).start()
        atexit.register(self._at_exit)

    # -- the thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            created = self._create()
        except Exception as exc:  # the kernel's own creation tries again and reports
            log.debug("early session create failed: %s", exc)
            created = None
        self.future.set_result(created)
        unwanted = self._to_destroy()
        if unwanted is not None:
            self._destroy(unwanted, self.prediction.connect_timeout + 5)
        self._settled.set()

    def _to_destroy(self) -> Created | None:
        """The created session if it is unwanted and the caller is the one to destroy it."""
        with self._lock:
            if self._taken or not self._discarded or self._destroying or not self.future.done():
                return None
            created = self.future.result()
            if created is None:
                return None
            self._destroying = True
            return created

    def _create(self) -> Created:
        with contextlib.closing(self._connection()) as conn:  # one connection for both
            return self._probe_and_create(conn)

    def _probe_and_create(self, conn: http.client.HTTPConnection) -> Created:
        pred = self.prediction
        try:
            probe = self._request(
                conn, "GET", "/", None, signed=False, timeout=pred.connect_timeout + 10
            )
        except HTTPStatusError:  # as RunLoopClient.probe: a base-layer server
            probe = {}
        probe = probe if isinstance(probe, dict) else {}
        self._api_version = _negotiated(str(probe.get("version") or ""))
        body = {
            "image": pred.image,
            "name": pred.name,
            "clientSessionToken": pred.name,
            "config": {"resources": pred.resources, "environ": pred.environ},
            "reuseIfExists": True,
            "enqueueOnly": False,
            "maxWaitSeconds": int(pred.startup_timeout),
        }
        answer = self._request(conn, "POST", "/session", body, timeout=pred.startup_timeout + 30)
        if not isinstance(answer, dict) or not (answer.get("sessionId") or answer.get("id")):
            raise ValueError(f"the create answered without a sessionId: {answer!r:.200}")
        return Created(probe, answer)

    def _destroy(self, created: Created, timeout: float) -> None:
        if not created.answer.get("created", True):
            return  # an existing session of that name was reused: not ours to end
        sid = str(created.answer.get("sessionId") or created.answer.get("id"))
        try:
            with contextlib.closing(self._connection()) as conn:
                path = f"/session/{quote(sid, safe='')}"
                self._request(conn, "DELETE", path, None, timeout=timeout)
            log.info("destroyed the unused early session %s", sid)
        except Exception as exc:
            log.warning("could not destroy the unused early session %s: %s", sid, exc)

    def _connection(self) -> http.client.HTTPConnection:
        url = urlsplit(self.prediction.endpoint)
        https = url.scheme == "https"
        conn_class = http.client.HTTPSConnection if https else http.client.HTTPConnection
        return conn_class(url.hostname or "", url.port, timeout=self.prediction.connect_timeout)

    def _request(
        self,
        conn: http.client.HTTPConnection,
        method: str,
        path: str,
        body: Any,
        *,
        timeout: float,
        signed: bool = True,
    ) -> Any:
        """One request on ``conn`` (no retries: the kernel's own create retries)."""
        pred = self.prediction
        url = urlsplit(pred.endpoint)
        host = _host_port(url.scheme, url.hostname or "", url.port)
        path_qs = url.path.rstrip("/") + path
        content_type = "application/json" if body is not None else "text/plain"
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Host": host, "Content-Type": content_type, "Accept": "application/json"}
        if signed and pred.access_key:
            keypair = Keypair(pred.access_key, pred.secret_key)
            headers.update(
                sign_headers(
                    keypair, method=method, path_qs=path_qs, host=host,
                    content_type=content_type, version=self._api_version,
                )
            )  # fmt: skip
        else:
            headers["X-BackendAI-Version"] = self._api_version
        if conn.sock is None:
            conn.connect()
        conn.sock.settimeout(timeout)
        conn.request(method, path_qs, body=data, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        if resp.status >= 400:
            raise HTTPStatusError(f"{method} {path}: HTTP {resp.status}: {raw[:200]!r}")
        return json.loads(raw) if raw else None

    def _at_exit(self) -> None:
        """Destroy a session that was created but never taken (waiting a little for it)."""
        with self._lock:
            if self._taken:
                return
            self._discarded = True
        self._settled.wait(EXIT_DESTROY_TIMEOUT)
        unwanted = self._to_destroy()
        if unwanted is not None:
            self._destroy(unwanted, EXIT_DESTROY_TIMEOUT)

    # -- the kernel's side -----------------------------------------------------------------------
    def discard(self) -> None:
        """Not wanted: destroyed once created (by the thread, or now if it is created)."""
        with self._lock:
            if self._taken:
                return
            self._discarded = True
        unwanted = self._to_destroy()
        if unwanted is not None:  # not a daemon: the process waits for it at exit
            threading.Thread(
                target=self._destroy, args=(unwanted, self.prediction.connect_timeout + 5),
                name="remote-kernel-early-destroy",
            ).start()  # fmt: skip

    def kernel_info_now(self) -> dict[str, Any] | None:
        """The remote kernel_info if the session is created already (never waits)."""
        if not self.future.done():
            return None
        created = self.future.result()
        info = created.answer.get("kernelInfo") if created is not None else None
        return info if isinstance(info, dict) else None

    async def take(self, client: RunLoopClient) -> SessionRef | None:
        """The created session for the kernel's first creation (None: create one as usual).

        ``client`` adopts the server's version probe; from here on the kernel owns the
        session (and destroys it at shutdown)."""
        import asyncio

        from ..client import SessionRef

        created = await asyncio.wrap_future(self.future)
        with self._lock:
            if created is None or self._discarded or self._taken:
                return None
            self._taken = True
        client.adopt_probe(created.probe)
        answer = created.answer
        info = answer.get("kernelInfo")
        return SessionRef(
            id=str(answer.get("sessionId") or answer.get("id")),
            name=str(answer.get("sessionName") or self.prediction.name),
            created=bool(answer.get("created", True)),
            status=str(answer.get("status") or ""),
            kernel_info=info if isinstance(info, dict) else None,
        )


_current: EarlySession | None = None


def begin(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> None:
    """Start creating the predicted session in the background (no-op when unpredictable)."""
    global _current
    if _current is not None:
        return
    try:
        prediction = predict(sys.argv[1:] if argv is None else argv, environ)
    except Exception as exc:  # the kernel starts as usual
        log.debug("no early session: %s", exc)
        return
    if prediction is None:
        return
    _current = EarlySession(prediction)
    _current.start()


def predicted_name() -> str | None:
    """The session name the early create used (the kernel's default name then)."""
    return _current.prediction.name if _current is not None else None


def claim(
    endpoint: str, access_key: str, secret_key: str, spec: SessionSpec
) -> EarlySession | None:
    """The early session when it is the one the kernel wants; a mismatched one is discarded."""
    global _current
    early, _current = _current, None
    if early is None:
        return None
    if early.prediction.matches(endpoint, access_key, secret_key, spec):
        return early
    log.info("the early session is not the one configured; it is destroyed")
    early.discard()
    return None


# -- the prediction ----------------------------------------------------------------------------
def predict(argv: list[str], environ: Mapping[str, str] | None = None) -> Prediction | None:
    """The session the kernel will ask for, or None when config files or options may change it."""
    env = os.environ if environ is None else environ
    given: dict[str, str] = {}
    for arg in argv:
        if arg.split("=", 1)[0] in UNPREDICTABLE:
            return None
        if arg.startswith("--RemoteKernel."):
            name, sep, value = arg[len("--RemoteKernel.") :].partition("=")
            if not sep:
                return None  # "--RemoteKernel.x value": not worth parsing
            if name == "reattach" and value.strip().lower() not in ("false", "0", ""):
                return None  # the name is the notebook's and may be in use: the kernel decides
            if name in PREDICTED:
                given[name] = value
    if _config_files_may_set_it(env):
        return None
    creds = resolve_credentials(given.get("endpoint") or None, env)
    endpoint = given.get("endpoint") or creds.endpoint
    access_key = given.get("access_key", creds.access_key)
    secret_key = given.get("secret_key", creds.secret_key)
    if not _normal_endpoint(endpoint).startswith(("http://", "https://")):
        return None
    resources = _literal(given["resources"]) if "resources" in given else {}
    environ_ = _literal(given["environ"]) if "environ" in given else {}
    if not isinstance(resources, dict) or not isinstance(environ_, dict):
        return None
    return Prediction(
        endpoint=_normal_endpoint(endpoint),
        access_key=access_key,
        secret_key=secret_key,
        image=given.get("image") or env.get("REMOTE_KERNEL_IMAGE", DEFAULT_IMAGE),
        name=given.get("session_name")
        or env.get("REMOTE_KERNEL_SESSION_NAME")
        or f"rk-{uuid.uuid4().hex[:16]}",
        resources=resources,
        environ={str(k): str(v) for k, v in environ_.items()},
        startup_timeout=float(given.get("startup_timeout") or DEFAULT_STARTUP_TIMEOUT),
        connect_timeout=float(given.get("connect_timeout") or DEFAULT_CONNECT_TIMEOUT),
    )


def _config_files_may_set_it(env: Mapping[str, str]) -> bool:
    """A config file that mentions RemoteKernel (Jupyter's or the IPython profile's)."""
    from jupyter_core.paths import jupyter_config_path  # ipykernel imports it anyway

    ipython_dir = Path(env.get("IPYTHONDIR") or Path.home() / ".ipython")
    candidates = [Path(d) / f for d in jupyter_config_path() for f in CONFIG_FILES]
    candidates += [ipython_dir / "profile_default" / f for f in PROFILE_FILES]
    for path in candidates:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if "RemoteKernel" in text:
            return True
    return False


def _literal(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return ast.literal_eval(text)


def _normal_endpoint(endpoint: str) -> str:
    return (endpoint or DEFAULT_ENDPOINT).strip().rstrip("/")


def _host_port(scheme: str, hostname: str, port: int | None) -> str:
    """The ``Host`` header and the signed host, as yarl's ``host_port_subcomponent`` has it."""
    host = f"[{hostname}]" if ":" in hostname else hostname
    default = 443 if scheme == "https" else 80
    return host if port is None or port == default else f"{host}:{port}"


def _negotiated(server: str) -> str:
    """``min(server, ours)``, as :func:`remote_kernel.client.negotiate_version` (no aiohttp)."""
    import re

    def key(version: str) -> tuple[int, str]:
        match = re.match(r"^v(\d+)\.(\d+)$", version or "")
        return (int(match.group(1)), match.group(2)) if match else (0, "")

    if key(server) == (0, ""):
        return p.API_VERSION
    return min(server, p.API_VERSION, key=key)

"""``GET /openapi.json`` describes every route, and schemathesis finds no 5xx in it.

The first tests build the app in process and compare its router with the description (so the
document cannot drift from routes.py). The fuzz test starts a real ``remote-kernel serve`` on
loopback (real kernels; once with the extensions, once without), loads the description from
it, and sends every operation a bounded, derandomized set of schemathesis cases, positive and
negative, signed with the keypair as the SDK signs. Half of the names in the cases are steered
to things that exist (:func:`steer`), so cases get past the 404s. No answer may be a 5xx, every
error must be problem+json (``title``, ``status``, ``detail``), every answer must match the
description, and the server must log no traceback.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from remote_kernel.auth import Keypair, sign_headers
from remote_kernel.protocol import API_VERSION
from remote_kernel.server.app import make_app
from remote_kernel.server.keystore import KeyStore
from remote_kernel.server.openapi import openapi_document
from remote_kernel.server.sessions import SessionManager
from remote_kernel.server.settings import ServerSettings

from .conftest import ServerProcess, start_server

pytestmark = pytest.mark.timeout(120)

PROBLEM_JSON = "application/problem+json"
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
#: Examples per operation and generation mode (the /kernel aliases share the handlers: fewer).
#: REMOTE_KERNEL_FUZZ_EXAMPLES=200 fuzzes deeper; REMOTE_KERNEL_FUZZ_SEED=<n> draws other cases
#: than the fixed (derandomized) ones the suite sends.
EXAMPLES = int(os.environ.get("REMOTE_KERNEL_FUZZ_EXAMPLES", "20"))
ALIAS_EXAMPLES = max(1, EXAMPLES // 5)
SEED = os.environ.get("REMOTE_KERNEL_FUZZ_SEED")
#: A run of the target session that continue/input requests name (half of them).
KNOWN_RUN = "fuzz-run"
#: A valid GET /events/session is a stream that ends only at shutdown: not fuzzed.
NOT_FUZZED = {("GET", "/events/session")}


# -- the description ----------------------------------------------------------------------------
@pytest.mark.parametrize("extensions", [True, False])
async def test_description_is_valid_and_covers_every_route(
    aiohttp_client: Any, tmp_path: Path, extensions: bool
) -> None:
    settings = ServerSettings(extensions=extensions)  # keypair auth on
    app = make_app(SessionManager(tmp_path / "state"), KeyStore(tmp_path / "state"), settings)
    client = await aiohttp_client(app)
    resp = await client.get("/openapi.json")  # unsigned
    assert resp.status == 200, await resp.text()
    assert resp.content_type == "application/json"
    doc = await resp.json()
    schema = schemathesis.openapi.from_dict(doc)
    schema.validate()  # the OpenAPI 3.1 meta-schema
    assert doc["openapi"].startswith("3.1")
    assert all(result.ok() for result in schema.get_all_operations())

    routes = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method not in ("HEAD", "*")
    }
    described = {
        (method.upper(), path)
        for path, item in doc["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    assert described == routes
    extension_paths = {p for _, p in routes if p.endswith(("/inspect", "/is-complete", "/channel"))}
    assert bool(extension_paths) == extensions
    assert ("GET", "/openapi.json") in routes

    # Unsigned requests elsewhere are refused, as problem+json with status and detail.
    resp = await client.get("/session")
    assert resp.status == 401 and resp.content_type == PROBLEM_JSON
    body = await resp.json()
    assert body["status"] == 401 and body["detail"] == body["msg"] and body["title"]


def test_description_follows_the_auth_setting() -> None:
    """Keypair auth: a security scheme and 401s; anonymous (--auth none): neither."""
    signed = openapi_document(ServerSettings())
    anonymous = openapi_document(ServerSettings(auth_required=False))
    assert signed["security"] and "securitySchemes" in signed["components"]
    assert "security" not in anonymous and "securitySchemes" not in anonymous["components"]
    hello = signed["paths"]["/"]["get"]
    assert hello["security"] == [] and "401" not in hello["responses"]
    assert "401" in signed["paths"]["/session"]["post"]["responses"]
    assert "401" not in anonymous["paths"]["/session"]["post"]["responses"]


# -- the fuzz -------------------------------------------------------------------------------------
class HmacAuth(requests.auth.AuthBase):
    """Sign each request as it goes out (path, query and content type as sent)."""

    def __init__(self, access_key: str, secret_key: str) -> None:
        self.keypair = Keypair(access_key, secret_key)

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        assert r.method is not None and r.url is not None
        r.headers.update(
            sign_headers(
                self.keypair, method=r.method, path_qs=r.path_url, host=urlsplit(r.url).netloc,
                content_type=r.headers.get("Content-Type") or "", version=API_VERSION,
            )
        )  # fmt: skip
        return r


@pytest.fixture(scope="module", params=["extensions", "base-layer"])
def fuzz_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """A real server with a low session cap and short poll holds, with the extensions or
    without (another description, other handler branches); its shutdown stops every kernel
    the fuzz started."""
    extra = ["--no-extensions"] if request.param == "base-layer" else []
    srv = start_server(
        tmp_path_factory.mktemp("openapi"),
        "--ServerApp.max_sessions_per_key=4",
        "--ServerApp.poll_hold=0.2",
        "--ServerApp.debug=True",  # a 500 would carry its traceback
        *extra,
    )
    yield srv
    srv.stop()


def problem_errors(status: int, content_type: str, content: bytes) -> list[str]:
    """Why an answer is not a proper one (empty when it is): 5xx, or an error that is not
    problem+json with ``title``, ``status`` (the answer's) and ``detail``."""
    text = content.decode("utf-8", "replace")
    if status >= 500:
        return [f"server error {status}: {text[:2000]}"]
    if status < 400:
        return []
    ctype = content_type.split(";")[0].strip()
    if ctype != PROBLEM_JSON:
        return [f"{status} as {ctype!r}, not {PROBLEM_JSON}: {text[:300]}"]
    try:
        body = json.loads(content)
    except ValueError:
        return [f"{status} body is not JSON: {text[:300]}"]
    if not isinstance(body, dict) or not all(k in body for k in ("title", "status", "detail")):
        return [f"{status} problem lacks title/status/detail: {text[:300]}"]
    if body["status"] != status:
        return [f"problem status {body['status']} on a {status} answer"]
    return []


def _errors_of(resp: requests.Response) -> list[str]:
    return problem_errors(resp.status_code, resp.headers.get("Content-Type", ""), resp.content)


KNOWN_FOLDER = "fuzzdir"
KNOWN_FILES = ("fuzz.txt", "sub", "sub/inner.txt")


def _known(value: Any, known: str) -> Any:
    """``known`` for half of the strings (by length: the same case always gets the same)."""
    return known if isinstance(value, str) and len(value) % 2 == 0 else value


def steer(case: schemathesis.Case) -> None:
    """Make random cases reach further, and keep them harmless.

    Half of the strings that name something get a name that exists: the python image on
    create (a kernel starts), the target session's run, its files, the key's folder (to mount,
    or to look up). The kernel runs what it is sent: no shell escapes or magics in code, and
    batch steps are harmless commands (their types are still fuzzed).
    """
    op = case.operation
    method, path = op.method.upper(), op.path
    if method == "GET" and path == "/folders/{name}":
        case.path_parameters = {"name": _known(case.path_parameters.get("name"), KNOWN_FOLDER)}
    query = case.query if isinstance(case.query, dict) else {}
    for key, known in (("files", KNOWN_FILES[0]), ("path", KNOWN_FILES[1])):
        value = query.get(key)
        if isinstance(value, list):
            query[key] = [_known(v, known) for v in value]
        elif isinstance(value, str):
            query[key] = _known(value, known)
    body = case.body
    if not isinstance(body, dict):
        return
    if isinstance(body.get("files"), list):
        body["files"] = [_known(v, KNOWN_FILES[2]) for v in body["files"]]
    if "path" in body:
        body["path"] = _known(body["path"], KNOWN_FILES[1])
    if path in ("/session", "/kernel"):
        body["image"] = _known(body.get("image"), "python:3.11")
        config = body.get("config")
        if isinstance(config, dict) and isinstance(config.get("mounts"), list):
            config["mounts"] = [_known(m, KNOWN_FOLDER) for m in config["mounts"]]
        if isinstance(config, dict) and isinstance(config.get("mount_map"), dict):
            config["mount_map"] = {_known(k, KNOWN_FOLDER): v
                                   for k, v in config["mount_map"].items()}  # fmt: skip
    for key in ("runId", "run_id"):
        if isinstance(body.get(key), str):
            body[key] = _known(body[key], KNOWN_RUN)
    code = body.get("code")
    if isinstance(code, str):
        body["code"] = "\n".join(
            "#" + line if line.lstrip().startswith(("!", "%")) else line
            for line in code.split("\n")
        )
    options = body.get("options")
    if body.get("mode") == "batch" and isinstance(options, dict):
        safe = ["true", "echo fuzz", "exit 3", "*"]
        for step in ("clean", "build", "exec"):
            value = options.get(step)
            if isinstance(value, str) and value:
                options[step] = safe[len(value) % len(safe)]


class Fuzz:
    """Sends cases, collects every finding instead of raising (so hypothesis never shrinks or
    replays: the run stays bounded)."""

    def __init__(self, srv: ServerProcess) -> None:
        self.srv = srv
        self.auth = HmacAuth(srv.access_key, srv.secret_key)
        self.findings: list[str] = []
        self.sent = 0
        self.statuses: dict[int, int] = {}
        self.target = ""

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> requests.Response:
        return requests.request(
            method, self.srv.endpoint + path, json=body, auth=self.auth, timeout=30, **kw
        )

    def prepare(self) -> None:
        """The things the steered cases name: a run, files and a folder."""
        sid = self.target
        body = {"mode": "query", "code": "print('fuzz')", "runId": KNOWN_RUN}
        assert self.call("POST", f"/session/{sid}", body).status_code == 200
        files = [("src", (name, b"fuzz\n")) for name in (KNOWN_FILES[0], KNOWN_FILES[2])]
        resp = self.call("POST", f"/session/{sid}/upload", files=files)
        assert resp.status_code == 204, resp.text
        assert self.call("POST", "/folders", {"name": KNOWN_FOLDER}).status_code == 201

    def send(self, case: schemathesis.Case) -> None:
        steer(case)
        resp = case.call(auth=self.auth, timeout=30)
        self.sent += 1
        self.statuses[resp.status_code] = self.statuses.get(resp.status_code, 0) + 1
        label = f"{case.operation.method.upper()} {case.operation.path}"
        ctype = (resp.headers.get("content-type") or [""])[0]
        errors = problem_errors(resp.status_code, ctype, resp.content)
        try:
            case.validate_response(
                resp,
                checks=[status_code_conformance, content_type_conformance,
                        response_schema_conformance],
            )  # fmt: skip
        except FailureGroup as exc:
            errors.append(str(exc)[:1500])
        for error in errors:
            self.findings.append(f"{label}: {error}\n  {case.as_curl_command()[:600]}")
        if case.operation.path in ("/session", "/kernel") and resp.status_code == 201:
            self.drop_new_session(resp.json())

    def drop_new_session(self, created: dict[str, Any]) -> None:
        """A session the fuzz created: its info must answer, then it goes (the cap stays free)."""
        sid = created.get("sessionId")
        if not created.get("created") or sid == self.target:
            return
        for method in ("GET", "DELETE"):
            resp = self.call(method, f"/session/{sid}")
            for error in _errors_of(resp) or ([] if resp.ok else [resp.text[:300]]):
                self.findings.append(f"{method} /session/{{new session}}: {error}")

    def run(self, operation: Any, n: int, mode: GenerationMode, **fixed: Any) -> None:
        strategy = operation.as_strategy(generation_mode=mode, **fixed)

        @settings(max_examples=n, deadline=None, database=None, derandomize=SEED is None,
                  phases=[Phase.generate], suppress_health_check=list(HealthCheck))  # fmt: skip
        @given(case=strategy)
        def send(case: schemathesis.Case) -> None:
            self.send(case)

        if SEED is not None:
            send = seed(int(SEED))(send)

        try:
            send()
        except Unsatisfiable:  # nothing to negate (no parameters, no body)
            assert mode == GenerationMode.NEGATIVE, operation.label


def _plan(
    path: str, method: str, target: str, *, few: bool
) -> list[tuple[int, GenerationMode, dict[str, Any]]]:
    """(examples, mode, fixed values) runs for one operation; ``few`` for every one of them.

    Operations on a session get the target session (and a few random ids); DELETE gets only
    random ids (the target is destroyed once, at the end), PATCH the target twice (a restart
    takes a second; the /kernel aliases share the handler: none).
    """
    alias = path.startswith(("/kernel", "/stream/kernel"))
    n = ALIAS_EXAMPLES if few or alias else EXAMPLES
    both = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
    if "{session_id}" not in path or method == "DELETE":
        return [(n, mode, {}) for mode in both]
    mine = {"path_parameters": {"session_id": target}}
    positive = GenerationMode.POSITIVE
    if method == "PATCH":
        return [(0 if alias else 2, positive, mine), (n, positive, {})]
    return [(n, mode, mine) for mode in both] + [(2, positive, {})]


@pytest.mark.slow
@pytest.mark.timeout(max(120, 10 * EXAMPLES))
def test_schemathesis_finds_no_server_error(fuzz_server: ServerProcess) -> None:
    started = time.monotonic()
    fuzz = Fuzz(fuzz_server)
    base_layer = "remote_kernel" not in fuzz.call("GET", "/").json()  # fewer cases there
    resp = fuzz.call("POST", "/session", {"image": "python:3", "name": "fuzz-target"})
    assert resp.status_code == 201, resp.text
    fuzz.target = resp.json()["sessionId"]
    fuzz.prepare()
    schema = schemathesis.openapi.from_url(fuzz_server.endpoint + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    fuzzed = 0
    for operation in operations:
        method, path = operation.method.upper(), operation.path
        if (method, path) in NOT_FUZZED:
            continue
        fuzzed += 1
        t0, sent = time.monotonic(), fuzz.sent
        for n, mode, fixed in _plan(path, method, fuzz.target, few=base_layer):
            if n:
                fuzz.run(operation, n, mode, **fixed)
        print(f"{method} {path}: {fuzz.sent - sent} in {time.monotonic() - t0:.2f} s")
    # The end of the target: destroyed through the description like any other case.
    destroy = schema["/session/{session_id}"]["DELETE"]
    fuzz.run(destroy, 1, GenerationMode.POSITIVE, path_parameters={"session_id": fuzz.target})
    assert fuzz.call("GET", f"/session/{fuzz.target}").status_code == 404

    elapsed = time.monotonic() - started
    summary = (
        f"{fuzz.sent} requests to {fuzzed} of {len(operations)} operations in {elapsed:.1f} s; "
        f"statuses {dict(sorted(fuzz.statuses.items()))}"
    )
    print(summary)
    log = fuzz_server.log()
    assert not fuzz.findings, (
        summary + "\n\n" + "\n\n".join(fuzz.findings[:30]) + "\n\nserver log tail:\n" + log[-3000:]
    )
    assert fuzz.statuses.get(200, 0) + fuzz.statuses.get(201, 0) + fuzz.statuses.get(204, 0) > 50
    assert "Traceback" not in log, log[-5000:]


def test_problem_errors_reads_problem_json() -> None:
    """The fuzz's own oracle: what counts as a proper error answer."""
    good = {"type": "x", "title": "t", "status": 404, "detail": "d", "msg": "d"}

    def check(status: int, body: Any, ctype: str = PROBLEM_JSON) -> list[str]:
        return problem_errors(status, ctype, json.dumps(body).encode())

    assert check(404, good) == [] and check(404, good, PROBLEM_JSON + "; charset=utf-8") == []
    assert check(200, [], "application/json") == []
    assert check(404, good, "text/plain")
    assert check(404, {"title": "t", "msg": "d"})
    assert check(400, good)  # another status than the answer's
    assert check(500, good)

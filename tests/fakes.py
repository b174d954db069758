"""``FakeRunLoopServer``: a small scripted run-loop server for narrow client tests.

A real aiohttp app on loopback (no mocks) that verifies HMAC signatures with ``auth.verify`` and
answers execute requests from scripts: a script is a list of :class:`Step` (the records and the
status of one response). It implements the cursor (protocol §2.3) and ``input_seq`` (§2.4)
semantics, and a repeated query as the same run (``idempotent-runs``), when its ``features`` list
them, and can stall a response so the client times out and
retries (the server's state has moved on, as with a response lost on the wire).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from remote_kernel import protocol as p
from remote_kernel.auth import verify
from remote_kernel.errors import (
    AuthenticationError,
    InvalidAPIParamsError,
    ServerError,
    SessionNotFoundError,
)

#: Every extension but the push channel (the fake speaks HTTP only).
ALL_FEATURES = [f for f in p.FEATURES if f != p.FEATURE_PUSH_CHANNEL]


@dataclass
class Step:
    """One execute response of a scripted run."""

    records: list[list[Any]]
    status: str = p.FINISHED
    exit_code: int | None = None
    options: dict[str, Any] | None = None
    reply: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.exit_code is None and self.status == p.FINISHED:
            self.exit_code = 0


@dataclass
class FakeRun:
    run_id: str
    steps: list[Step]
    index: int = 0
    delivered: list[list[Any]] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    seen_input_seqs: set[int] = field(default_factory=set)

    @property
    def step(self) -> Step:
        return self.steps[self.index]


class FakeRunLoopServer:
    """``async with FakeRunLoopServer() as srv``: ``srv.endpoint``, ``srv.script(code, steps)``."""

    def __init__(
        self,
        *,
        features: list[str] | None = None,
        access_key: str = "AKIATESTFAKE00000000",
        secret_key: str = "fake-secret-key-for-tests-only-000000000",
        anonymous: bool = False,
    ) -> None:
        self.features = ALL_FEATURES if features is None else features
        self.access_key = access_key
        self.secret_key = secret_key
        self.anonymous = anonymous
        self.sessions: dict[str, dict[str, Any]] = {}
        self.scripts: dict[str, list[Step]] = {}
        self.runs: dict[str, FakeRun] = {}
        self.requests: list[dict[str, Any]] = []
        self.stalls: dict[str, float] = {}
        self.failures: dict[str, tuple[int, Any]] = {}
        self.executed_codes: list[str] = []
        self._runner: web.AppRunner | None = None
        self.endpoint = ""

    # -- scripting ------------------------------------------------------------------------------
    def script(self, code: str, steps: list[Step]) -> None:
        self.scripts[code] = steps

    def stall_next(self, mode: str, seconds: float = 5.0) -> None:
        """The next execute of ``mode`` is processed, then its response is held ``seconds``."""
        self.stalls[mode] = seconds

    def fail_next(self, key: str, status: int, body: Any) -> None:
        """The next request whose key (``"POST /session"``, ``"query"``...) matches fails."""
        self.failures[key] = (status, body)

    def modes(self) -> list[str]:
        return [r["mode"] for r in self.requests if "mode" in r]

    # -- lifecycle ------------------------------------------------------------------------------
    async def __aenter__(self) -> FakeRunLoopServer:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_get("/", self._root)
        app.router.add_post("/session", self._create)
        app.router.add_get("/session/{id}", self._info)
        app.router.add_delete("/session/{id}", self._destroy)
        app.router.add_post("/session/{id}", self._execute)
        app.router.add_post("/session/{id}/interrupt", self._interrupt)
        app.router.add_post("/session/{id}/complete", self._complete)
        app.router.add_post("/session/{id}/is-complete", self._is_complete)
        app.router.add_post("/session/{id}/inspect", self._inspect)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.endpoint = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # -- plumbing -------------------------------------------------------------------------------
    @web.middleware
    async def _middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        entry: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "content_type": request.headers.get("Content-Type"),
        }
        self.requests.append(entry)
        try:
            if request.path != "/" and not self.anonymous:
                verify(
                    request.headers,
                    method=request.method,
                    path_qs=request.raw_path,
                    host=request.host,
                    content_type=request.content_type,
                    lookup_secret=lambda ak: self.secret_key if ak == self.access_key else None,
                )
            key = f"{request.method} {request.path}"
            if key in self.failures:
                status, body = self.failures.pop(key)
                return _problem_response(status, body)
            return await handler(request)
        except ServerError as exc:
            return web.json_response(
                exc.problem(), status=exc.status, content_type="application/problem+json"
            )

    def _session(self, request: web.Request) -> dict[str, Any]:
        sid = request.match_info["id"]
        for sess in self.sessions.values():
            if sid in (sess["sessionId"], sess["sessionName"]):
                return sess
        raise SessionNotFoundError(f"No such session: {sid}")

    # -- handlers -------------------------------------------------------------------------------
    async def _root(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {"version": p.API_VERSION, "manager": "fake"}
        if self.features:
            body["remote_kernel"] = {"version": "0.0.0", "features": self.features}
        return web.json_response(body)

    async def _create(self, request: web.Request) -> web.Response:
        body = await request.json()
        name = body.get("name")
        if name in self.sessions:
            sess = self.sessions[name]
            return web.json_response({**sess, "created": False}, status=201)
        sess = {
            "sessionId": str(uuid.uuid4()),
            "sessionName": name,
            "status": "RUNNING",
            "servicePorts": [],
            "image": body.get("image"),
            "config": body.get("config"),
        }
        self.sessions[name] = sess
        return web.json_response({**sess, "created": True}, status=201)

    async def _info(self, request: web.Request) -> web.Response:
        sess = self._session(request)
        info = dict(sess)
        if p.FEATURE_KERNEL_INFO in self.features:
            info["kernelInfo"] = {
                "language_info": {"name": "python", "file_extension": ".py", "version": "3.99"},
                "banner": "Fake remote Python",
            }
        return web.json_response(info)

    async def _destroy(self, request: web.Request) -> web.Response:
        sess = self._session(request)
        self.sessions.pop(sess["sessionName"], None)
        return web.json_response({"stats": {}})

    async def _interrupt(self, request: web.Request) -> web.Response:
        self._session(request)
        return web.Response(status=204)

    async def _complete(self, request: web.Request) -> web.Response:
        self._session(request)
        body = await request.json()
        self.requests[-1]["body"] = body
        result: dict[str, Any] = {"status": "finished", "error": None, "suggestions": ["print"]}
        if p.FEATURE_INSPECT in self.features:
            pos = body["options"]["cursor_pos"]
            result.update(matches=["print"], cursor_start=pos - 2, cursor_end=pos, metadata={})
        return web.json_response({"result": result})

    async def _is_complete(self, request: web.Request) -> web.Response:
        self._session(request)
        body = await request.json()
        status = "incomplete" if body["code"].rstrip().endswith(":") else "complete"
        return web.json_response({"result": {"status": status, "indent": ""}})

    async def _inspect(self, request: web.Request) -> web.Response:
        self._session(request)
        return web.json_response(
            {"result": {"status": "ok", "found": True, "data": {"text/plain": "doc"},
                        "metadata": {}}}
        )  # fmt: skip

    async def _execute(self, request: web.Request) -> web.Response:
        self._session(request)
        body = await request.json()
        self.requests[-1].update(body=body, mode=body.get("mode"))
        mode = body.get("mode")
        run_id = body.get("run_id") or body.get("runId")
        if not run_id:
            raise InvalidAPIParamsError("runId is missing!")
        options = body.get("options") or {}
        use_cursor = p.FEATURE_OUTPUT_CURSOR in self.features
        cursor = body.get("cursor", options.get("cursor")) if use_cursor else None
        if mode == "query" and run_id in self.runs and p.FEATURE_IDEMPOTENT_RUNS in self.features:
            run = self.runs[run_id]  # a retried query: the same run, from the cursor
            out = run.delivered[cursor or 0 :]
        elif mode == "query":
            code = body.get("code", "")
            self.executed_codes.append(code)
            steps = self.scripts.get(code) or [Step([[p.STDOUT, f"ran {code}\n"]])]
            run = FakeRun(run_id, [Step(list(s.records), s.status, s.exit_code, s.options,
                                        s.reply) for s in steps])  # fmt: skip
            self.runs[run_id] = run
            run.delivered.extend(run.step.records)
            out = list(run.step.records)
        else:
            run = self.runs.get(run_id)
            if run is None:
                raise InvalidAPIParamsError(f"Unknown run {run_id}")
            replay = cursor is not None and cursor < len(run.delivered)
            seq = options.get("input_seq")
            repeated_input = mode == "input" and seq is not None and seq in run.seen_input_seqs
            if mode == "input" and not repeated_input:
                run.inputs.append(body.get("code", ""))
                if seq is not None:
                    run.seen_input_seqs.add(seq)
            if replay or repeated_input:
                start = cursor if cursor is not None else len(run.delivered)
                out = run.delivered[start:]
                if not out and run.index + 1 < len(run.steps):
                    run.index += 1
                    run.delivered.extend(run.step.records)
                    out = list(run.step.records)
            elif run.index + 1 < len(run.steps):
                run.index += 1
                run.delivered.extend(run.step.records)
                out = list(run.step.records)
            else:
                out = []
        step = run.step
        result = p.run_result(
            run_id,
            step.status,
            out,
            exit_code=step.exit_code,
            options=step.options,
            cursor=len(run.delivered) if use_cursor else None,
            reply=step.reply if p.FEATURE_JUPYTER_CONSOLE in self.features else None,
        )
        if mode in self.stalls:
            await asyncio.sleep(self.stalls.pop(mode))
        return web.json_response(result)


def _problem_response(status: int, body: Any) -> web.Response:
    if isinstance(body, dict):
        return web.json_response(body, status=status, content_type="application/problem+json")
    return web.Response(status=status, text=str(body), content_type="text/html")


__all__ = ["AuthenticationError", "FakeRunLoopServer", "Step"]

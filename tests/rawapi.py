"""A minimal signed HTTP client for tests that speak the run-loop API byte for byte."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import aiohttp

from remote_kernel.auth import Keypair, sign_headers
from remote_kernel.protocol import API_VERSION, NON_TERMINAL


class RawAPI:
    """Signed requests against a server; every response is ``(status, json body or text)``."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.host = self.endpoint.split("//", 1)[1]
        self.keypair = Keypair(access_key, secret_key)
        self.http = aiohttp.ClientSession()

    async def close(self) -> None:
        await self.http.close()

    async def __aenter__(self) -> RawAPI:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        content_type: str = "application/json",
        now: datetime | None = None,
        sign: bool = True,
    ) -> tuple[int, Any]:
        headers = {"Content-Type": content_type}
        if sign:
            headers.update(
                sign_headers(
                    self.keypair, method=method, path_qs=path, host=self.host,
                    content_type=content_type, version=API_VERSION, now=now,
                )
            )  # fmt: skip
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        async with self.http.request(
            method, self.endpoint + path, data=data, headers=headers
        ) as resp:
            text = await resp.text()
            self.last_content_type = resp.content_type
            try:
                return resp.status, json.loads(text) if text else None
            except ValueError:
                return resp.status, text

    async def create(self, name: str, image: str = "python:3.11", **extra: Any) -> str:
        status, body = await self.call("POST", "/session", {"image": image, "name": name, **extra})
        assert status == 201, body
        return str(body["sessionId"])

    async def destroy(self, sid: str) -> None:
        await self.call("DELETE", f"/session/{sid}")

    async def execute(
        self, sid: str, mode: str, code: str, run_id: str, **fields: Any
    ) -> dict[str, Any]:
        body = {"mode": mode, "code": code, "runId": run_id, "run_id": run_id, **fields}
        status, resp = await self.call("POST", f"/session/{sid}", body)
        assert status == 200, resp
        return dict(resp["result"])

    async def run(
        self, sid: str, code: str, *, jupyter: bool = False, cursor: bool = False, **options: Any
    ) -> tuple[list[list[Any]], dict[str, Any]]:
        """Run a cell to its end; return all records and the final result."""
        run_id = uuid.uuid4().hex
        opts = {**options, **({"console": "jupyter"} if jupyter else {})}
        result = await self.execute(sid, "query", code, run_id, options=opts)
        records = list(result["console"])
        while result["status"] in NON_TERMINAL:
            assert result["status"] != "waiting-input", "use execute() for input"
            extra = {"cursor": result["cursor"]} if cursor else {}
            result = await self.execute(sid, "continue", "", run_id, **extra)
            records += result["console"]
        return records, result

"""A minimal signed HTTP client for tests that speak the run-loop API byte for byte."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import aiohttp
from yarl import URL

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
        url = URL(self.endpoint + path, encoded=True)  # sent exactly as signed
        async with self.http.request(method, url, data=data, headers=headers) as resp:
            text = await resp.text()
            self.last_content_type = resp.content_type
            try:
                return resp.status, json.loads(text) if text else None
            except ValueError:
                return resp.status, text

    async def upload(
        self, sid: str, files: dict[str, bytes], *, quote: bool = False
    ) -> tuple[int, Any]:
        """Multipart upload, field ``src``, filenames sent raw (or percent-encoded like the SDK)."""
        writer = aiohttp.MultipartWriter("form-data")
        for name, data in files.items():
            part = writer.append(data, {"Content-Type": "application/octet-stream"})
            part.set_content_disposition("form-data", name="src", filename=name, quote_fields=quote)
        path = f"/session/{sid}/upload"
        headers = sign_headers(
            self.keypair, method="POST", path_qs=path, host=self.host,
            content_type="multipart/form-data", version=API_VERSION,
        )  # fmt: skip
        headers["Content-Type"] = writer.content_type
        async with self.http.post(self.endpoint + path, data=writer, headers=headers) as resp:
            text = await resp.text()
            return resp.status, json.loads(text) if text else None

    async def download(self, sid: str, *names: str) -> tuple[int, list[bytes] | Any]:
        """``POST /download?files=...``; the tar archives of a multipart/mixed answer."""
        from urllib.parse import urlencode

        path = f"/session/{sid}/download?" + urlencode([("files", n) for n in names])
        headers = sign_headers(
            self.keypair, method="POST", path_qs=path, host=self.host,
            content_type="text/plain", version=API_VERSION,
        )  # fmt: skip
        headers["Content-Type"] = "text/plain"
        url = URL(self.endpoint + path, encoded=True)
        async with self.http.post(url, headers=headers) as resp:
            if resp.status != 200:
                return resp.status, await resp.json(content_type=None)
            reader = aiohttp.MultipartReader.from_response(resp)
            parts = []
            while (part := await reader.next()) is not None:
                assert isinstance(part, aiohttp.BodyPartReader)
                parts.append(bytes(await part.read()))
            return resp.status, parts

    def _stream_headers(self, path: str) -> dict[str, str]:
        """WebSocket and SSE requests carry no Content-Type and sign application/octet-stream."""
        return sign_headers(
            self.keypair, method="GET", path_qs=path, host=self.host,
            content_type="application/octet-stream", version=API_VERSION,
        )  # fmt: skip

    async def websocket(self, path: str) -> aiohttp.ClientWebSocketResponse:
        url = URL(self.endpoint + path, encoded=True)
        return await self.http.ws_connect(url, headers=self._stream_headers(path))

    async def events(self, path: str) -> aiohttp.ClientResponse:
        url = URL(self.endpoint + path, encoded=True)
        return await self.http.get(url, headers=self._stream_headers(path))

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

    async def drain(self, sid: str, result: dict[str, Any]) -> dict[str, Any]:
        """Poll a run on to its next settled state (a poll may return output before the end):
        the last result, with the console of every response on the way."""
        console = list(result["console"])
        while result["status"] == "continued":
            result = await self.execute(sid, "continue", "", result["runId"])
            console += result["console"]
        return {**result, "console": console}

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

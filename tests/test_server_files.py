"""Files of a session over HTTP: upload, download, listing, and confinement to the work dir."""

from __future__ import annotations

import io
import json
import tarfile
import uuid
from pathlib import Path

import pytest

from .conftest import ServerProcess, start_server
from .rawapi import RawAPI

pytestmark = pytest.mark.timeout(120)


def _members(tar_bytes: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        return {m.name: m for m in tar.getmembers()}


def _read(tar_bytes: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        member = tar.extractfile(name)
        assert member is not None
        return member.read()


async def test_upload_list_download(api: RawAPI, sid: str) -> None:
    status, _ = await api.upload(
        sid, {"top.txt": b"top", "sub/data.txt": b"1,2,3\n"}, quote=True
    )  # quote=True percent-encodes "sub/data.txt" as "sub%2Fdata.txt", as the SDK does
    assert status == 204
    records, _ = await api.run(sid, "print(open('sub/data.txt').read(), open('top.txt').read())")
    assert records == [["stdout", "1,2,3\n top\n"]]
    status, body = await api.call("GET", f"/session/{sid}/files?path=.")
    assert status == 200 and body["abspath"] == "."
    listing = {e["filename"]: e for e in json.loads(body["files"])}
    assert set(listing) == {"sub", "top.txt"}
    assert listing["top.txt"]["size"] == 3 and listing["sub"]["mode"].startswith("d")
    status, body = await api.call("GET", f"/session/{sid}/files", {"path": "sub"})
    assert [e["filename"] for e in json.loads(body["files"])] == ["data.txt"]
    status, parts = await api.download(sid, "top.txt", "sub")
    assert status == 200 and len(parts) == 2
    assert _read(parts[0], "top.txt") == b"top"
    assert set(_members(parts[1])) == {"sub", "sub/data.txt"}
    assert _read(parts[1], "sub/data.txt") == b"1,2,3\n"


async def test_escapes_are_refused_and_nothing_leaves_the_work_dir(
    api: RawAPI, sid: str, server: ServerProcess, tmp_path: Path
) -> None:
    marker = f"rk-escape-{uuid.uuid4().hex[:8]}"
    names = [f"../{marker}", f"/tmp/{marker}", f"a/../../{marker}", f"..%2F{marker}",
             f"..%2F..%2F{marker}"]  # fmt: skip
    for name in names:
        status, body = await api.upload(sid, {name: b"escaped"})
        assert status == 400, name
        assert body["type"].endswith("/invalid-api-params")
    for path in ("../..", "/etc", "..%2F.."):
        status, body = await api.call("GET", f"/session/{sid}/files?path={path}")
        assert status == 400, path
        status, body = await api.download(sid, path)
        assert status == 400, path
    # a symlink made inside the session is not followed out
    await api.run(sid, "import os; os.makedirs('d'); os.symlink('/etc/hostname', 'd/host')")
    status, body = await api.download(sid, "d/host")
    assert status == 400
    status, parts = await api.download(sid, "d")
    assert status == 200
    member = _members(parts[0])["d/host"]
    assert member.issym() and member.linkname == "/etc/hostname"
    status, _ = await api.upload(sid, {"d/host": b"overwrite the target?"})
    assert status == 400
    # nothing was written outside any work directory
    outside = [Path("/tmp") / marker, Path("/") / marker, server.state_dir.parent / marker]
    found = [p for p in outside if p.exists()] + list(server.state_dir.rglob(f"*{marker}*"))
    assert found == []


async def test_limits_are_413(tmp_path: Path) -> None:
    limits = ["--ServerApp.max_upload_files=2", "--ServerApp.max_upload_bytes=1000",
              "--ServerApp.max_download_bytes=5000"]  # fmt: skip
    srv = start_server(tmp_path, *limits)
    try:
        async with RawAPI(srv.endpoint, srv.access_key, srv.secret_key) as api:
            sid = await api.create("t-limits")
            status, body = await api.upload(sid, {"a": b"1", "b": b"2", "c": b"3"})
            assert status == 413 and body["type"].endswith("/request-too-large")
            status, body = await api.upload(sid, {"big": b"x" * 1001})
            assert status == 413 and "max_upload_bytes" in body["msg"]
            await api.run(sid, "open('big.bin', 'wb').write(b'x' * 10000)")
            status, body = await api.download(sid, "big.bin")
            assert status == 413 and "max_download_bytes" in body["msg"]
    finally:
        srv.stop()

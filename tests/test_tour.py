"""The tour notebook's plot cell shows an image even where the remote has no matplotlib."""

from __future__ import annotations

import base64
import json
from importlib.resources import files

import pytest
from jupyter_client.manager import start_new_kernel

pytestmark = pytest.mark.timeout(120)


def test_plot_cell_falls_back_to_a_plain_python_png() -> None:
    tour = json.loads(files("remote_kernel").joinpath("examples/tour.ipynb").read_text())
    plot = next(c for c in tour["cells"] if c["cell_type"] == "code" and "matplotlib" in
                "".join(c["source"]))  # fmt: skip
    km, kc = start_new_kernel(kernel_name="python3")
    outputs: list[dict] = []
    try:
        kc.execute_interactive("import sys; sys.modules['matplotlib'] = None", timeout=60)
        reply = kc.execute_interactive(
            "".join(plot["source"]), output_hook=outputs.append, timeout=60
        )
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    assert reply["content"]["status"] == "ok"
    shown = [m for m in outputs if m["msg_type"] in ("stream", "display_data")]
    assert [m["msg_type"] for m in shown] == ["stream", "display_data"]
    assert "matplotlib is not installed" in shown[0]["content"]["text"]
    png = base64.b64decode(shown[1]["content"]["data"]["image/png"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and png[12:16] == b"IHDR"

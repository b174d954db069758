"""A notebook run through the remote kernel gives what the local ``python3`` kernel gives.

Executed with nbclient (as JupyterLab's headless runners and papermill do): streams,
execute_result, multi-MIME display, display updates by id, clear_output, shell escapes, warnings
and errors, with the same execution counts. An error stops a run that does not allow errors, and
``jupyter nbconvert --execute`` exits non-zero on it.
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from .conftest import ServerProcess
from .kernel_helpers import install_kernelspec

KERNEL_NAME = "remote-python-parity"

pytestmark = pytest.mark.timeout(240)

TINY_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5Erk"
    "Jggg=="
)

CELLS = [
    "print('hello')\nimport sys\nprint('to stderr', file=sys.stderr)\nprint('back')",
    "6 * 7",
    "_2 + 1",
    "x = 10\nx",
    "from IPython.display import display, HTML, Markdown, Image, JSON\n"
    "display({'text/plain': 'plain', 'text/html': '<b>html</b>', 'text/markdown': '**md**'},"
    " raw=True)\n"
    "display(JSON({'a': [1, 2]}))",
    f"import base64\ndisplay(Image(data=base64.b64decode('{TINY_PNG}'), format='png'))",
    "handle = display(Markdown('first'), display_id='d1')\nprint('between')",
    "handle.update(Markdown('second'))\n'updated'",
    "from IPython.display import clear_output\nprint('gone')\nclear_output()\nprint('kept')",
    "print('a', end='')\nclear_output(wait=True)\nprint('b')",
    "!echo hi",
    "import warnings\nwarnings.warn('careful')",
    "for i in range(3):\n    print(i)",
    "1/0",
    "print('after the error')",
    "HTML('<i>result html</i>')",
]

_VOLATILE = [
    (re.compile(r"/tmp/ipykernel_\d+/\d+\.py"), "<cell file>"),
    (re.compile(r"0x[0-9a-f]{6,}"), "0x…"),
]


def _notebook(cells: list[str]) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in cells]
    return nb


def _run(nb: nbformat.NotebookNode, kernel: str, **kw: Any) -> nbformat.NotebookNode:
    nb = copy.deepcopy(nb)
    NotebookClient(nb, kernel_name=kernel, timeout=60, startup_timeout=60, **kw).execute()
    return nb


def _normalize(value: Any) -> Any:
    if isinstance(value, str):
        for pattern, repl in _VOLATILE:
            value = pattern.sub(repl, value)
        return value
    if isinstance(value, list):
        return [_normalize(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalize(v) for k, v in value.items()}
    return value


def _outputs(nb: nbformat.NotebookNode) -> list[tuple[Any, Any]]:
    return [
        (cell.get("execution_count"), _normalize(nbformat.from_dict(cell.outputs)))
        for cell in nb.cells
    ]


@pytest.fixture(scope="module")
def remote_kernel(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> str:
    install_kernelspec(KERNEL_NAME, server.env, prefix=tmp_path_factory.mktemp("spec"))
    return KERNEL_NAME


def test_notebook_outputs_match_local_python3(remote_kernel: str) -> None:
    nb = _notebook(CELLS)
    local = _run(nb, "python3", allow_errors=True)
    remote = _run(nb, remote_kernel, allow_errors=True)
    local_outputs, remote_outputs = _outputs(local), _outputs(remote)
    for index, (want, got) in enumerate(zip(local_outputs, remote_outputs, strict=True)):
        assert got == want, f"cell {index} ({CELLS[index]!r}) differs"
    # sanity: the things we meant to cover are really in there
    flat = str(remote_outputs)
    for needle in ("hello", "'second'", "kept", "'hi", "UserWarning", "ZeroDivisionError"):
        assert needle in flat
    assert remote.cells[1].outputs[0]["execution_count"] == 2
    assert remote.cells[2].outputs[0]["data"]["text/plain"] == "43"


def test_error_cell_stops_the_run(remote_kernel: str) -> None:
    nb = _notebook(["a = 1", "undefined_name", "print('never')"])
    with pytest.raises(CellExecutionError) as info:
        _run(nb, remote_kernel)
    assert info.value.ename == "NameError"
    assert "undefined_name" in str(info.value)


def test_nbconvert_execute_exits_nonzero_on_error(remote_kernel: str, tmp_path: Path) -> None:
    path = tmp_path / "failing.ipynb"
    nbformat.write(_notebook(["print('ok')", "raise ValueError('boom')"]), path)
    nbconvert = Path(sys.executable).parent / "jupyter-nbconvert"
    proc = subprocess.run(
        [str(nbconvert), "--to", "notebook", "--execute", str(path),
         f"--ExecutePreprocessor.kernel_name={remote_kernel}",
         "--ExecutePreprocessor.timeout=60", "--output", str(tmp_path / "out.ipynb")],
        capture_output=True, text=True, timeout=180, env=dict(os.environ),
    )  # fmt: skip
    assert proc.returncode != 0
    assert "ValueError" in proc.stderr and "boom" in proc.stderr

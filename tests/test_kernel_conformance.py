"""jupyter_kernel_test's conformance suite, run on the remote kernel against the real server.

Plus our own stdin, password, interrupt and error-field tests (names contain ``remote`` so they
never collide with future upstream tests).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from queue import Empty
from typing import Any

import jupyter_kernel_test
import pytest

from .conftest import ServerProcess
from .kernel_helpers import install_kernelspec

KERNEL_NAME = "remote-python-conformance"

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module", autouse=True)
def _remote_kernelspec(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Runs before the classes' setUpClass: the spec points at this module's server."""
    install_kernelspec(KERNEL_NAME, server.env, prefix=tmp_path_factory.mktemp("spec"))


@pytest.fixture(autouse=True)
def _server_alive(server: ServerProcess) -> Iterator[None]:
    yield
    assert server.proc.poll() is None, server.log()[-2000:]


class RemoteKernelTests(jupyter_kernel_test.KernelTests):
    kernel_name = KERNEL_NAME
    language_name = "python"
    file_extension = ".py"

    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples = [{"text": "zi", "matches": {"zip"}}]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples = ["import = 7q"]
    code_page_something = "print?"
    code_generate_error = "raise"
    code_execute_result = [
        {"code": "1+2+3", "result": "6"},
        {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"},
    ]
    code_display_data = [
        {"code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))",
         "mime": "text/html"},
        {"code": "from IPython.display import Math, display; display(Math('\\\\frac{1}{2}'))",
         "mime": "text/latex"},
    ]  # fmt: skip
    code_history_pattern = "1?2*"
    supported_history_operations = ("tail", "range", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"

    # -- helpers ----------------------------------------------------------------------------
    def _collect(self, msg_id: str, timeout: float = 30) -> list[dict[str, Any]]:
        """IOPub messages of ``msg_id`` up to its idle status."""
        out: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.kc.get_iopub_msg(timeout=1)
            except Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            if msg["msg_type"] == "status" and msg["content"]["execution_state"] == "idle":
                return out
            out.append(msg)
        raise AssertionError(f"no idle status for {msg_id}: {out}")

    def _reply(self, msg_id: str, timeout: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = self.kc.get_shell_msg(timeout=timeout)
            if msg["parent_header"].get("msg_id") == msg_id:
                return msg
        raise AssertionError("no reply")

    def _wait_for_output(self, msg_id: str, text: str, timeout: float = 20) -> list[Any]:
        seen: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                msg = self.kc.get_iopub_msg(timeout=0.5)
            except Empty:
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            seen.append(msg)
            if text in str(msg["content"].get("text", "")):
                return seen
        raise AssertionError(f"{text!r} never appeared: {seen}")

    def _assert_alive(self) -> None:
        time.sleep(0.2)
        self.flush_channels()  # late status messages of the interrupt request
        self.assertTrue(self.km.is_alive())
        reply, outputs = self.execute_helper("print('still here')")
        self.assertEqual(reply["content"]["status"], "ok")
        self.assertIn("still here", outputs[0]["content"]["text"])

    # -- our own tests ----------------------------------------------------------------------
    def test_remote_kernel_info_features(self) -> None:
        self.flush_channels()
        msg_id = self.kc.kernel_info()
        content = self._reply(msg_id)["content"]
        self.assertNotIn("kernel subshells", content.get("supported_features", []))
        self.assertNotIn("debugger", content.get("supported_features", []))
        self.assertEqual(content["language_info"]["name"], "python")
        self.assertIn("version", content["language_info"])  # from the remote kernel

    def test_remote_error_fields(self) -> None:
        self.flush_channels()
        reply, outputs = self.execute_helper("undefined_name_xyz")
        content = reply["content"]
        self.assertEqual(content["status"], "error")
        self.assertEqual(content["ename"], "NameError")
        self.assertIn("undefined_name_xyz", content["evalue"])
        errors = [m for m in outputs if m["msg_type"] == "error"]
        self.assertEqual(len(errors), 1)
        self.assertEqual(errors[0]["content"]["ename"], "NameError")
        self.assertTrue(errors[0]["content"]["traceback"])

    def test_remote_execution_count_matches_underscore(self) -> None:
        self.flush_channels()
        reply, outputs = self.execute_helper("40 + 2")
        count = reply["content"]["execution_count"]
        results = [m for m in outputs if m["msg_type"] == "execute_result"]
        self.assertEqual(results[0]["content"]["execution_count"], count)
        reply, outputs = self.execute_helper(f"_{count}")
        results = [m for m in outputs if m["msg_type"] == "execute_result"]
        self.assertEqual(results[0]["content"]["data"]["text/plain"], "42")
        self.assertEqual(reply["content"]["execution_count"], count + 1)

    def test_remote_silent_execute(self) -> None:
        self.flush_channels()
        before, _ = self.execute_helper("1")
        reply, outputs = self.execute_helper("print('hidden'); 5", silent=True)
        self.assertEqual(reply["content"]["status"], "ok")
        self.assertEqual(outputs, [])
        after, _ = self.execute_helper("silent_var = 1; 2")
        self.assertEqual(
            after["content"]["execution_count"], before["content"]["execution_count"] + 1
        )

    def test_remote_stdin(self) -> None:
        self.flush_channels()
        msg_id = self.kc.execute("name = input('your name? '); print('got', repr(name))",
                                 allow_stdin=True)  # fmt: skip
        request = self.kc.get_stdin_msg(timeout=30)
        self.assertEqual(request["content"]["prompt"], "your name? ")
        self.assertFalse(request["content"]["password"])
        self.kc.input("Alice")
        reply = self._reply(msg_id)
        self.assertEqual(reply["content"]["status"], "ok")
        outputs = self._collect(msg_id)
        texts = "".join(m["content"].get("text", "") for m in outputs)
        self.assertIn("got 'Alice'", texts)
        self.assertNotIn("your name?", texts)  # the prompt is shown once, by the frontend

    def test_remote_password(self) -> None:
        self.flush_channels()
        msg_id = self.kc.execute("import getpass; pw = getpass.getpass('pw: '); print(len(pw))",
                                 allow_stdin=True)  # fmt: skip
        request = self.kc.get_stdin_msg(timeout=30)
        self.assertTrue(request["content"]["password"])
        self.kc.input("secret")
        self.assertEqual(self._reply(msg_id)["content"]["status"], "ok")
        texts = "".join(m["content"].get("text", "") for m in self._collect(msg_id))
        self.assertIn("6", texts)
        self.assertNotIn("secret", texts)

    def test_remote_stdin_not_allowed(self) -> None:
        self.flush_channels()
        msg_id = self.kc.execute("input('x? ')", allow_stdin=False)
        reply = self._reply(msg_id)
        self.assertEqual(reply["content"]["status"], "error")
        self.assertEqual(reply["content"]["ename"], "StdinNotImplementedError")

    def test_remote_interrupt_idle_is_noop(self) -> None:
        self.flush_channels()
        self.km.interrupt_kernel()
        time.sleep(0.5)
        self._assert_alive()

    def test_remote_interrupt_during_sleep(self) -> None:
        self.flush_channels()
        msg_id = self.kc.execute("import time\nprint('start', flush=True)\ntime.sleep(30)")
        self._wait_for_output(msg_id, "start")
        started = time.monotonic()
        self.km.interrupt_kernel()
        reply = self._reply(msg_id)
        self.assertLess(time.monotonic() - started, 10)
        self.assertEqual(reply["content"]["status"], "error")
        self.assertEqual(reply["content"]["ename"], "KeyboardInterrupt")
        errors = [m for m in self._collect(msg_id) if m["msg_type"] == "error"]
        self.assertEqual(len(errors), 1)
        self._assert_alive()
        # the remote state survived the interrupt
        reply, outputs = self.execute_helper("time.sleep(0); 'time' in dir()")
        self.assertEqual(outputs[-1]["content"]["data"]["text/plain"], "True")

    def test_remote_interrupt_while_waiting_for_input(self) -> None:
        self.flush_channels()
        msg_id = self.kc.execute("x = input('never answered: ')", allow_stdin=True)
        self.kc.get_stdin_msg(timeout=30)
        self.km.interrupt_kernel()
        reply = self._reply(msg_id)
        self.assertEqual(reply["content"]["status"], "error")
        self.assertEqual(reply["content"]["ename"], "KeyboardInterrupt")
        self._collect(msg_id)
        self._assert_alive()


class RemoteKernelWelcomeTests(jupyter_kernel_test.IopubWelcomeTests):
    kernel_name = KERNEL_NAME
    support_iopub_welcome = True

"""Isolated, cached virtual environments holding one release of the official Backend.AI SDK.

Each environment lives in ``~/.cache/remote-kernel/sdk-venvs/<name>-<hash>``, where the hash covers
the interpreter's version and the pinned requirements, so changing a pin builds a fresh one. A
marker file is written only after a successful install (a half-built directory is rebuilt), and an
``fcntl`` lock keeps parallel test runs from building the same environment at once.

Run ``python tests/sdk/venvs.py [name ...]`` to build them ahead of a test run.
"""

from __future__ import annotations

import fcntl
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CACHE_ROOT = Path(
    os.environ.get("REMOTE_KERNEL_SDK_VENVS")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "remote-kernel"
    / "sdk-venvs"
)
MARKER = ".remote-kernel-complete"
BUILD_TIMEOUT = 600


@dataclass(frozen=True)
class SdkSpec:
    """One SDK release and the interpreter it needs."""

    name: str
    python: tuple[int, int]
    requirements: tuple[str, ...]

    @property
    def python_name(self) -> str:
        return f"python{self.python[0]}.{self.python[1]}"


SDK_SPECS = {
    # 23.9.10 is the newest release that installs on Python 3.11; it crashes when signing with
    # yarl >= 1.13 (backendai-runloop-api.md, install note).
    "23.9.10": SdkSpec("sdk-23.9.10", (3, 11), ("backend.ai-client==23.9.10", "yarl<1.13")),
    # 26.x requires Python >=3.13,<3.14.
    "26.9.6": SdkSpec("sdk-26.9.6", (3, 13), ("backend.ai-client==26.9.6",)),
}


def _reports_version(candidate: str, version: tuple[int, int]) -> bool:
    """True if ``candidate`` really runs and is that Python (pyenv shims may exist yet fail)."""
    try:
        out = subprocess.run(
            [candidate, "-c", "import sys, venv; print(*sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and out.stdout.split() == [str(v) for v in version]


def find_python(version: tuple[int, int]) -> str | None:
    """A working interpreter of that version, or None.

    Candidates: the running interpreter, ``pythonX.Y`` on PATH, then pyenv's installs. Each is
    probed by running it, because ``which python3.13`` may find a pyenv shim that only fails.
    """
    name = f"python{version[0]}.{version[1]}"
    candidates: list[str] = []
    if sys.version_info[:2] == version:
        candidates.append(getattr(sys, "_base_executable", None) or sys.executable)
    found = shutil.which(name)
    if found:
        candidates.append(found)
    pyenv_root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    candidates += sorted(
        glob.glob(f"{pyenv_root}/versions/{version[0]}.{version[1]}*/bin/{name}"), reverse=True
    )
    candidates += [f"/usr/bin/{name}", f"/usr/local/bin/{name}"]
    seen: set[str] = set()
    for candidate in candidates:
        if candidate in seen or not os.path.exists(candidate):
            continue
        seen.add(candidate)
        if _reports_version(candidate, version):
            return candidate
    return None


def venv_dir(spec: SdkSpec) -> Path:
    digest = hashlib.sha256(
        "\n".join([spec.python_name, *sorted(spec.requirements)]).encode()
    ).hexdigest()[:12]
    return CACHE_ROOT / f"{spec.name}-{digest}"


def venv_python(path: Path) -> Path:
    return path / "bin" / "python"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def is_built(path: Path) -> bool:
    return (path / MARKER).is_file() and venv_python(path).exists()


def ensure_venv(spec: SdkSpec, python: str) -> Path:
    """The cached environment for ``spec``, building it with ``python`` if needed."""
    path = venv_dir(spec)
    if is_built(path):
        return path
    with _locked(path.with_name(path.name + ".lock")):
        if is_built(path):  # another process built it while we waited
            return path
        if path.exists():
            shutil.rmtree(path)
        started = time.monotonic()
        try:
            subprocess.run(
                [python, "-m", "venv", str(path)],
                check=True,
                capture_output=True,
                text=True,
                timeout=120,
            )
            subprocess.run(
                [str(venv_python(path)), "-m", "pip", "install", "--disable-pip-version-check",
                 "--no-input", "--quiet", *spec.requirements],
                check=True,
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT,
            )  # fmt: skip
            subprocess.run(
                [str(venv_python(path)), "-c", "import ai.backend.client.session"],
                check=True,
                capture_output=True,
                text=True,
                timeout=120,
            )
        except subprocess.CalledProcessError as exc:
            shutil.rmtree(path, ignore_errors=True)
            raise RuntimeError(
                f"building the SDK venv {path} failed: {exc.cmd}\n{exc.stdout}\n{exc.stderr}"
            ) from exc
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        (path / MARKER).write_text(
            f"{' '.join(spec.requirements)}\nbuilt in {time.monotonic() - started:.1f}s\n"
        )
    return path


def main(argv: list[str]) -> int:
    for key in argv or list(SDK_SPECS):
        spec = SDK_SPECS[key]
        python = find_python(spec.python)
        if python is None:
            print(f"{key}: no working {spec.python_name}; skipped")
            continue
        started = time.monotonic()
        path = ensure_venv(spec, python)
        print(f"{key}: {path} ({time.monotonic() - started:.1f}s, {python})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

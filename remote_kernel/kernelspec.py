"""Kernelspecs that run cells on a remote compute session.

A pure stack, like ``ipykernel.kernelspec``::

    make_kernel_cmd() -> get_kernel_dict() -> write_kernel_spec(path) -> install()

The ``remote-kernel install | list | remove`` applications on top of it are in
:mod:`remote_kernel.kernelspec_apps`.

``kernel.json`` names the absolute ``sys.executable`` (VS Code hides Python specs whose
interpreter it cannot match), ``interrupt_mode: "message"``, and our settings under
``metadata.remote_kernel``.
It never holds a secret: the kernel reads its keypair from ``BACKEND_ACCESS_KEY`` /
``BACKEND_SECRET_KEY`` or from the user's 0600 credentials file (:mod:`remote_kernel.credentials`).
"""

from __future__ import annotations

import importlib.resources
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from jupyter_client.kernelspec import KernelSpecManager

from .errors import ConfigurationError

KERNEL_NAME = "remote-python"
DISPLAY_NAME = "Python (remote)"
KERNEL_MODULE = "remote_kernel"
METADATA_KEY = "remote_kernel"
LOGO_FILES = ("logo-32x32.png", "logo-64x64.png", "logo-svg.svg")
BASE_ENV = {"PYDEVD_DISABLE_FILE_VALIDATION": "1"}

_NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")

# image family -> Jupyter language name (as the language's own kernels report it)
_LANGUAGES = {
    "python": "python",
    "pytorch": "python",
    "tensorflow": "python",
    "jupyter": "python",
    "julia": "julia",
    "r": "R",
    "nodejs": "javascript",
    "node": "javascript",
    "cpp": "c++",
    "c": "c",
    "java": "java",
    "lua": "lua",
    "php": "php",
    "go": "go",
    "rust": "rust",
    "scala": "scala",
    "octave": "octave",
    "haskell": "haskell",
}

_BAD_NAME = (
    "Invalid kernelspec name {name!r}: use only ASCII letters, digits, '.', '_' and '-' "
    "(for example --name=remote-gpu)."
)


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid kernelspec name, else raise ``ConfigurationError``."""
    if not _NAME_RE.match(name or ""):
        raise ConfigurationError(_BAD_NAME.format(name=name))
    return name


def _scalar(value: str) -> int | float | str:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def parse_resources(text: str) -> dict[str, int | float | str]:
    """``"cpu=2,mem=4g,cuda.shares=0.5"`` -> ``{"cpu": 2, "mem": "4g", "cuda.shares": 0.5}``."""
    resources: dict[str, int | float | str] = {}
    for item in (part.strip() for part in (text or "").split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigurationError(
                f"Invalid resource {item!r}: write slot=value pairs separated by commas, "
                "for example --resources=cpu=2,mem=4g"
            )
        resources[key.strip()] = _scalar(value.strip())
    return resources


def parse_env(pairs: list[str]) -> dict[str, str]:
    """``["A=1", "B=x=y"]`` -> ``{"A": "1", "B": "x=y"}``."""
    env: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigurationError(
                f"Invalid --env value {pair!r}: write NAME=value (repeat --env for more)."
            )
        env[key] = value
    return env


def language_from_image(image: str | None) -> str:
    """The Jupyter language of an image: ``python`` for Python images (and no image), else the
    language named by the image, e.g. ``julia`` for ``cr.backend.ai/stable/julia:1.9``."""
    if not image:
        return "python"
    base = image.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0].lower()
    if base in _LANGUAGES:
        return _LANGUAGES[base]
    family = re.split(r"[-_.]", base, maxsplit=1)[0]
    if family in _LANGUAGES:
        return _LANGUAGES[family]
    if re.match(r"^python\d", base):
        return "python"
    return family or "python"


def default_display_name(image: str | None = None) -> str:
    """``Python (remote)``; for another language, e.g. ``Julia (remote)``."""
    language = language_from_image(image)
    if language == "python":
        return DISPLAY_NAME
    label = language if language[:1].isupper() else language.capitalize()
    return f"{label} (remote)"


def default_kernel_name(image: str | None = None) -> str:
    """``remote-python``; for another language, e.g. ``remote-julia``."""
    language = language_from_image(image).lower().replace("+", "p")
    if language == "python":
        return KERNEL_NAME
    return "remote-" + (re.sub(r"[^a-z0-9._-]", "", language) or "kernel")


def make_kernel_cmd(
    executable: str | None = None,
    endpoint: str | None = None,
    image: str | None = None,
    resources: dict[str, Any] | None = None,
    extra_arguments: list[str] | None = None,
    *,
    sync_on_start: bool = False,
    reattach: bool = False,
) -> list[str]:
    """The kernel's ``argv``: an absolute interpreter, ``-m remote_kernel -f {connection_file}``
    and one ``--RemoteKernel.<trait>=value`` flag per given setting."""
    argv = [executable or sys.executable, "-m", KERNEL_MODULE, "-f", "{connection_file}"]
    if endpoint:
        argv.append(f"--RemoteKernel.endpoint={endpoint}")
    if image:
        argv.append(f"--RemoteKernel.image={image}")
    if resources:
        argv.append(f"--RemoteKernel.resources={json.dumps(resources, sort_keys=True)}")
    if sync_on_start:
        argv.append("--RemoteKernel.sync_on_start=True")
    if reattach:
        argv.append("--RemoteKernel.reattach=True")
    return [*argv, *(extra_arguments or [])]


def get_kernel_dict(
    endpoint: str | None = None,
    image: str | None = None,
    resources: dict[str, Any] | None = None,
    display_name: str | None = None,
    env: dict[str, str] | None = None,
    executable: str | None = None,
    extra_arguments: list[str] | None = None,
    *,
    sync_on_start: bool = False,
    reattach: bool = False,
) -> dict[str, Any]:
    """The content of ``kernel.json``. Never contains a secret.

    ``sync_on_start`` makes the kernel send the notebook's folder to each new session before
    its first cell (``RemoteKernel.sync_on_start``); it is then noted in the metadata too.
    """
    ours: dict[str, Any] = {
        "endpoint": endpoint,
        "image": image,
        "resources": dict(resources or {}),
    }
    if sync_on_start:
        ours["sync_on_start"] = True
    if reattach:
        ours["reattach"] = True
    return {
        "argv": make_kernel_cmd(
            executable,
            endpoint,
            image,
            resources,
            extra_arguments,
            sync_on_start=sync_on_start,
            reattach=reattach,
        ),
        "display_name": display_name or default_display_name(image),
        "language": language_from_image(image),
        "interrupt_mode": "message",
        "env": {**BASE_ENV, **(env or {})},
        "metadata": {METADATA_KEY: ours},
    }


def assets_dir() -> Path:
    """The logos: inside the installed wheel (``remote_kernel/_kernelspec_assets``) or, in a
    source checkout / editable install, the repository's top-level ``kernelspec/``."""
    packaged = importlib.resources.files("remote_kernel") / "_kernelspec_assets"
    if packaged.is_dir():
        return Path(str(packaged))
    checkout = Path(__file__).resolve().parent.parent / "kernelspec"
    if checkout.is_dir():
        return checkout
    raise FileNotFoundError(
        f"The kernelspec logos are missing (looked in {packaged} and {checkout}); reinstall "
        "remote-kernel-proxy."
    )


def write_kernel_spec(path: Path | str | None = None, **kernel_dict_args: Any) -> str:
    """Write ``kernel.json`` and the logos into ``path`` (a new temp dir if ``None``).

    ``kernel_dict_args`` go to :func:`get_kernel_dict`. Returns the directory.
    """
    target = Path(path) if path is not None else Path(tempfile.mkdtemp(suffix="_kernels"))
    target.mkdir(parents=True, exist_ok=True)
    source = assets_dir()
    for logo in LOGO_FILES:
        if (source / logo).is_file():
            shutil.copyfile(source / logo, target / logo)
    spec = get_kernel_dict(**kernel_dict_args)
    (target / "kernel.json").write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")
    return str(target)


def install(
    kernel_spec_manager: KernelSpecManager | None = None,
    kernel_name: str = KERNEL_NAME,
    user: bool = True,
    prefix: str | None = None,
    **kernel_dict_args: Any,
) -> str:
    """Install a remote kernelspec and return its directory.

    ``user=True`` (the default) installs into the user's Jupyter data dir, where JupyterLab and
    VS Code find it; ``prefix`` installs into ``PREFIX/share/jupyter/kernels`` instead (pass
    ``sys.prefix`` for this environment). An existing spec of the same name is replaced.
    """
    validate_name(kernel_name)
    ksm = kernel_spec_manager or KernelSpecManager()
    staging = tempfile.mkdtemp(prefix="remote-kernelspec-")
    try:
        source = write_kernel_spec(Path(staging) / kernel_name, **kernel_dict_args)
        return str(
            ksm.install_kernel_spec(
                source, kernel_name=kernel_name, user=user and not prefix, prefix=prefix
            )
        )
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remote_specs(kernel_spec_manager: KernelSpecManager | None = None) -> list[dict[str, Any]]:
    """Our installed specs (those with ``metadata.remote_kernel``), sorted by name."""
    ksm = kernel_spec_manager or KernelSpecManager()
    found = []
    for name, entry in sorted(ksm.get_all_specs().items()):
        spec = entry.get("spec", {})
        ours = (spec.get("metadata") or {}).get(METADATA_KEY)
        if not isinstance(ours, dict):
            continue
        found.append(
            {
                "name": name,
                "display_name": spec.get("display_name", ""),
                "endpoint": ours.get("endpoint"),
                "image": ours.get("image"),
                "resources": ours.get("resources") or {},
                "path": entry.get("resource_dir", ""),
            }
        )
    return found

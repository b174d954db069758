"""Kernelspecs that run cells on a remote compute session.

A pure stack, like ``ipykernel.kernelspec``::

    make_kernel_cmd() -> get_kernel_dict() -> write_kernel_spec(path) -> install()

and the ``remote-kernel install | list | remove`` applications on top of it.

``kernel.json`` names the absolute ``sys.executable`` (VS Code hides Python specs whose
interpreter it cannot match), ``interrupt_mode: "message"``, and our settings under
``metadata.remote_kernel``.
It never holds a secret: the kernel reads its keypair from ``BACKEND_ACCESS_KEY`` /
``BACKEND_SECRET_KEY`` or from the user's 0600 credentials file (:mod:`remote_kernel.credentials`).
"""

from __future__ import annotations

import errno
import getpass
import importlib.resources
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from traitlets import Bool, List, Unicode, default
from traitlets.config import Application, SingletonConfigurable

from ._version import __version__
from .credentials import credentials_path, save_credentials
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
_EACCES = (
    "Permission denied writing to {path}. Install for your user only with --user (the default), "
    "into this environment with --sys-prefix, or choose a directory with --prefix."
)
_EACCES_REMOVE = (
    "Permission denied removing {path}. It was installed by another user or system-wide; "
    "remove it with the same rights it was installed with."
)


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------


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
    return [*argv, *(extra_arguments or [])]


def get_kernel_dict(
    endpoint: str | None = None,
    image: str | None = None,
    resources: dict[str, Any] | None = None,
    display_name: str | None = None,
    env: dict[str, str] | None = None,
    executable: str | None = None,
    extra_arguments: list[str] | None = None,
) -> dict[str, Any]:
    """The content of ``kernel.json``. Never contains a secret."""
    return {
        "argv": make_kernel_cmd(executable, endpoint, image, resources, extra_arguments),
        "display_name": display_name or default_display_name(image),
        "language": language_from_image(image),
        "interrupt_mode": "message",
        "env": {**BASE_ENV, **(env or {})},
        "metadata": {
            METADATA_KEY: {
                "endpoint": endpoint,
                "image": image,
                "resources": dict(resources or {}),
            }
        },
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


# ---------------------------------------------------------------------------------------------
# Applications
# ---------------------------------------------------------------------------------------------


class SubcommandApp(Application):
    """Base of our subcommands: a fresh instance per run, and readable failures."""

    version = __version__

    @classmethod
    def instance(cls, *args: Any, **kwargs: Any) -> Any:
        # traitlets keeps subcommand singletons alive after ``main()`` returns, on every class of
        # their MRO; a later ``main([...])`` in the same process must neither inherit the first
        # run's settings nor hit MultipleInstanceError for a sibling subcommand.
        for klass in cls.mro():
            if issubclass(klass, SingletonConfigurable):
                klass._instance = None
        return super().instance(*args, **kwargs)

    def fail(self, message: str, code: int = 1) -> NoReturn:
        """Print ``message`` to stderr and exit with ``code``."""
        print(f"{self.name}: error: {message}", file=sys.stderr)
        self.exit(code)
        raise SystemExit(code)  # unreachable; for type checkers


class InstallKernelSpecApp(SubcommandApp):
    """``remote-kernel install``."""

    name = "remote-kernel install"
    description = """Install a Jupyter kernelspec whose cells run on a remote compute session.

    The spec goes to your user's Jupyter data dir by default (JupyterLab, Notebook and VS Code
    find it there). A secret key is never written into kernel.json: if BACKEND_ACCESS_KEY and
    BACKEND_SECRET_KEY are set, they are saved to your private credentials file instead.
    """
    examples = """\
remote-kernel install --endpoint=https://api.example.com
remote-kernel install --name=remote-gpu --resources=cpu=4,mem=16g,cuda.device=1
remote-kernel install --image=julia:1.9 --sys-prefix
"""

    kernel_name = Unicode(
        "",
        help=f"Name of the kernelspec ([A-Za-z0-9._-]; default {KERNEL_NAME!r}, or per language).",
    ).tag(config=True)
    display_name = Unicode(
        "", help=f"Name shown in the kernel picker (default {DISPLAY_NAME!r}, or per language)."
    ).tag(config=True)
    endpoint = Unicode(
        help="API endpoint of the compute-session server (default: $BACKEND_ENDPOINT at install "
        "time; if empty, the kernel reads BACKEND_ENDPOINT when it starts)."
    ).tag(config=True)
    image = Unicode(
        "", help="Session image, e.g. python:3.11 (default: the server's default image)."
    ).tag(config=True)
    resources = Unicode(
        "", help="Resource slots for the session, e.g. cpu=2,mem=4g,cuda.device=1."
    ).tag(config=True)
    env = List(
        Unicode(),
        help="Environment variable NAME=value for the kernel process; repeat for more.",
    ).tag(config=True)
    access_key = Unicode(
        help="Access key to save with the secret key from $BACKEND_SECRET_KEY (or a prompt) in "
        "your 0600 credentials file (default: $BACKEND_ACCESS_KEY)."
    ).tag(config=True)
    user = Bool(True, help="Install for the current user (the default).").tag(config=True)
    sys_prefix = Bool(False, help=f"Install into this environment ({sys.prefix}).").tag(config=True)
    prefix = Unicode(
        "", help="Install into PREFIX/share/jupyter/kernels (add it to JUPYTER_PATH)."
    ).tag(config=True)

    aliases = {
        "name": "InstallKernelSpecApp.kernel_name",
        "display-name": "InstallKernelSpecApp.display_name",
        "endpoint": "InstallKernelSpecApp.endpoint",
        "image": "InstallKernelSpecApp.image",
        "resources": "InstallKernelSpecApp.resources",
        "env": "InstallKernelSpecApp.env",
        "access-key": "InstallKernelSpecApp.access_key",
        "prefix": "InstallKernelSpecApp.prefix",
    }
    flags = {
        "user": ({"InstallKernelSpecApp": {"user": True}}, "Install for the current user."),
        "sys-prefix": (
            {"InstallKernelSpecApp": {"sys_prefix": True}},
            f"Install into this environment ({sys.prefix}).",
        ),
    }

    @default("endpoint")
    def _endpoint_default(self) -> str:
        return os.environ.get("BACKEND_ENDPOINT", "")

    @default("access_key")
    def _access_key_default(self) -> str:
        return os.environ.get("BACKEND_ACCESS_KEY", "")

    def _scope_prefix(self) -> str | None:
        if self.prefix and self.sys_prefix:
            self.fail("Choose one of --prefix and --sys-prefix.")
        if self.prefix:
            return os.path.abspath(os.path.expanduser(self.prefix))
        return sys.prefix if self.sys_prefix else None

    def _save_keypair(self, endpoint: str | None) -> str:
        access = self.access_key
        secret = os.environ.get("BACKEND_SECRET_KEY", "")
        explicit = "access_key" in self.config.get("InstallKernelSpecApp", {})
        if access and not secret and explicit:
            if not sys.stdin.isatty():
                self.fail("--access-key needs its secret key: set BACKEND_SECRET_KEY.")
            secret = getpass.getpass(f"Secret key for {access}: ")
        if not (access and secret):
            return (
                "No keypair saved: the kernel reads BACKEND_ACCESS_KEY and BACKEND_SECRET_KEY "
                f"from its environment, or from {credentials_path()}."
            )
        path = save_credentials(endpoint, access, secret)
        where = endpoint or "any endpoint"
        return f"Saved the keypair {access} for {where} to {path} (mode 0600)."

    def start(self) -> None:
        if self.extra_args:
            self.fail(f"unexpected arguments {self.extra_args}; see --help.")
        try:
            endpoint = self.endpoint.strip() or None
            image = self.image.strip() or None
            kernel_name = validate_name(self.kernel_name or default_kernel_name(image))
            prefix = self._scope_prefix()
            resources = parse_resources(self.resources)
            env = parse_env(self.env)
            path = install(
                kernel_name=kernel_name,
                user=prefix is None,
                prefix=prefix,
                endpoint=endpoint,
                image=image,
                resources=resources,
                display_name=self.display_name or None,
                env=env,
            )
            note = self._save_keypair(endpoint)
        except ConfigurationError as exc:
            self.fail(str(exc))
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                self.fail(_EACCES.format(path=exc.filename or prefix or "the kernels directory"))
            raise
        display = self.display_name or default_display_name(image)
        print(f"Installed kernelspec {kernel_name} ({display}) in {path}")
        print(f"  endpoint: {endpoint or '$BACKEND_ENDPOINT at kernel start'}")
        print(note)
        data_dir = os.path.join(prefix or "", "share", "jupyter")
        searched = os.environ.get("JUPYTER_PATH", "").split(os.pathsep)
        if prefix and not self.sys_prefix and data_dir not in searched:
            print(f"Add {data_dir} to JUPYTER_PATH so that Jupyter finds it.")


class ListKernelSpecsApp(SubcommandApp):
    """``remote-kernel list``."""

    name = "remote-kernel list"
    description = "List the installed remote kernelspecs (name, display name, endpoint, image)."

    json_output = Bool(False, help="Print JSON instead of a table.").tag(config=True)
    flags = {"json": ({"ListKernelSpecsApp": {"json_output": True}}, "Print JSON.")}

    def start(self) -> None:
        specs = remote_specs()
        if self.json_output:
            print(json.dumps(specs, indent=1))
            return
        if not specs:
            print("No remote kernelspecs installed; create one with `remote-kernel install`.")
            return
        rows = [("NAME", "DISPLAY NAME", "ENDPOINT", "IMAGE", "PATH")]
        rows += [
            (
                s["name"],
                s["display_name"],
                s["endpoint"] or "$BACKEND_ENDPOINT",
                s["image"] or "(server default)",
                s["path"],
            )
            for s in specs
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
            print("  ".join([*cells, row[4]]))


class RemoveKernelSpecApp(SubcommandApp):
    """``remote-kernel remove NAME [NAME ...]``."""

    name = "remote-kernel remove"
    description = "Remove remote kernelspecs by name (only ones `remote-kernel list` shows)."
    examples = "remote-kernel remove remote-python"

    def start(self) -> None:
        if not self.extra_args:
            self.fail("name the kernelspec to remove, e.g. `remote-kernel remove remote-python`.")
        ksm = KernelSpecManager()
        for name in self.extra_args:
            try:
                spec = ksm.get_kernel_spec(name)
            except NoSuchKernel:
                self.fail(
                    f"No kernelspec named {name!r}; `remote-kernel list` shows the installed ones."
                )
            if METADATA_KEY not in (spec.metadata or {}):
                self.fail(
                    f"The kernelspec {name!r} ({spec.resource_dir}) was not installed by "
                    "remote-kernel; remove it with `jupyter kernelspec remove`."
                )
            try:
                path = ksm.remove_kernel_spec(name)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EPERM):
                    self.fail(_EACCES_REMOVE.format(path=spec.resource_dir))
                raise
            print(f"Removed kernelspec {name} from {path}")

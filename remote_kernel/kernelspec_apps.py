"""The ``remote-kernel install | list | remove`` applications (traitlets), and their base.

They parse options and print; what a kernelspec holds and where it goes is
:mod:`remote_kernel.kernelspec`. ``install`` also saves a keypair from the environment (or a
prompt) to the user's 0600 credentials file (:mod:`remote_kernel.credentials`), never into
``kernel.json``. :class:`SubcommandApp` is the base of every ``remote-kernel`` subcommand.
"""

from __future__ import annotations

import errno
import getpass
import json
import os
import sys
from typing import Any, NoReturn

from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from traitlets import Bool, List, Unicode, default
from traitlets.config import Application, SingletonConfigurable

from ._version import __version__
from .credentials import credentials_path, save_credentials
from .errors import ConfigurationError
from .kernelspec import (
    DISPLAY_NAME,
    KERNEL_NAME,
    METADATA_KEY,
    default_display_name,
    default_kernel_name,
    install,
    parse_env,
    parse_resources,
    remote_specs,
    validate_name,
)

_EACCES = (
    "Permission denied writing to {path}. Install for your user only with --user (the default), "
    "into this environment with --sys-prefix, or choose a directory with --prefix."
)
_EACCES_REMOVE = (
    "Permission denied removing {path}. It was installed by another user or system-wide; "
    "remove it with the same rights it was installed with."
)


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
remote-kernel install --name=remote-synced --sync-on-start
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
    sync_on_start = Bool(
        False,
        help="Send the notebook's folder (new and changed files, as `%remote sync`) to each new "
        "session before its first cell runs.",
    ).tag(config=True)
    reattach = Bool(
        False,
        help="Keep each notebook's remote session when the kernel process dies or is "
        "restarted by jupyter_server, and re-attach to it (RemoteKernel.reattach).",
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
        "sync-on-start": (
            {"InstallKernelSpecApp": {"sync_on_start": True}},
            "Send the notebook's folder to each new session before its first cell runs.",
        ),
        "reattach": (
            {"InstallKernelSpecApp": {"reattach": True}},
            "Re-attach a notebook to its remote session after the kernel process died.",
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
                sync_on_start=self.sync_on_start,
                reattach=self.reattach,
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
        if self.sync_on_start:
            print("  sync on start: the notebook's folder goes to each new session")
        if self.reattach:
            print("  re-attach: a notebook finds its remote session again after a kernel crash")
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

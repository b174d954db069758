"""``remote-kernel serve``: the ServerApp (settings) and ``make_app`` (the aiohttp application)."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ipaddress
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from aiohttp import web
from traitlets import (
    Bool,
    CaselessStrEnum,
    Dict,
    Float,
    Int,
    List,
    TraitError,
    Unicode,
    default,
    validate,
)
from traitlets.config import Application, Config, catch_config_error
from yarl import URL

from .._version import __version__
from ..cli import command_name
from ..errors import RemoteKernelError
from .appkeys import keystore_key, manager_key, settings_key
from .isolation import Isolation
from .keystore import KeyStore, default_state_dir
from .limits import Resources
from .middleware import auth_middleware, error_middleware
from .routes import setup_routes
from .sessions import SessionManager
from .settings import ServerSettings
from .streams import close_streams, websockets_key

ENV_PREFIX = "REMOTE_KERNEL_"


def make_app(
    manager: SessionManager, keystore: KeyStore, settings: ServerSettings | None = None
) -> web.Application:
    """The aiohttp application; its cleanup context reaps idle sessions and, at exit, stops all."""
    settings = settings or ServerSettings()
    app = web.Application(
        middlewares=[error_middleware, auth_middleware], client_max_size=settings.max_request_bytes
    )
    app[settings_key] = settings
    app[keystore_key] = keystore
    app[manager_key] = manager
    app[websockets_key] = set()
    app.on_shutdown.append(close_streams)
    setup_routes(app, settings)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        await manager.recover()  # what a killed server left: re-adopted or cleaned up
        manager.start_pool()
        reaper = asyncio.ensure_future(manager.reap_forever())
        yield
        reaper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reaper
        await manager.shutdown_all()

    app.cleanup_ctx.append(lifecycle)
    return app


def _env(name: str) -> str:
    return f"{ENV_PREFIX}{name.upper()}"


class ServerApp(Application):
    """The compute-session server: Backend.AI's run-loop API over local Jupyter kernels.

    Every setting is a ``--ServerApp.<name>`` flag, a ``c.ServerApp.<name>`` line in
    ``remote_kernel_server_config.py`` and a ``REMOTE_KERNEL_<NAME>`` environment variable (the
    variable is the default; a config file or the command line wins over it).
    """

    name = "remote-kernel-serve"
    version = __version__
    description = (
        "Serve compute sessions over the Backend.AI manager API (the official Backend.AI SDK "
        "works against it); every session is a real Jupyter kernel in its own work directory."
    )
    aliases = {
        "ip": "ServerApp.ip",
        "port": "ServerApp.port",
        "state-dir": "ServerApp.state_dir",
        "auth": "ServerApp.auth",
        "idle-timeout": "ServerApp.idle_timeout",
    }
    flags = {
        "debug": ({"ServerApp": {"debug": True}, "Application": {"log_level": 10}},
                  "Include tracebacks in error bodies and log at debug level."),
        "no-extensions": ({"ServerApp": {"extensions": False}},
                          "Behave exactly like a real Backend.AI manager (base layer only)."),
    }  # fmt: skip

    ip = Unicode("127.0.0.1", help=f"Address to listen on. Environment: {_env('ip')}.").tag(
        config=True
    )
    port = Int(
        8090, help=f"Port to listen on; 0 picks a free one. Environment: {_env('port')}."
    ).tag(config=True)
    state_dir = Unicode(
        help="Directory for keypairs and session work directories. Environment: "
        f"{_env('state_dir')} (default: $XDG_STATE_HOME/remote-kernel)."
    ).tag(config=True)
    auth = CaselessStrEnum(
        ["keypair", "none"],
        "keypair",
        help="'keypair': Backend.AI HMAC with the keypairs of `remote-kernel keys create`. "
        "'none': anonymous access, allowed only when listening on loopback. "
        f"Environment: {_env('auth')}.",
    ).tag(config=True)
    extensions = Bool(
        True,
        help="Offer the remote_kernel extensions (lossless Jupyter records, output cursor, "
        "kernel info, inspect, is-complete). False: behave exactly like a Backend.AI manager. "
        f"Environment: {_env('extensions')}.",
    ).tag(config=True)
    poll_hold = Float(
        1.0,
        help="Longest time (s, at most 2) a run-loop request waits when there is no output. "
        f"Environment: {_env('poll_hold')}.",
    ).tag(config=True)
    poll_coalesce = Float(
        0.005,
        help="Once output exists, how long (s) a run-loop request waits for more before "
        f"answering. Environment: {_env('poll_coalesce')}.",
    ).tag(config=True)
    push_coalesce = Float(
        0.0,
        help="On the push channel, how long (s) new output waits for more before it is sent "
        "(0: at once; output produced while a frame is being sent goes in the next one). "
        f"Environment: {_env('push_coalesce')}.",
    ).tag(config=True)
    max_sessions_per_key = Int(
        16, help=f"Most sessions one keypair may hold. Environment: {_env('max_sessions_per_key')}."
    ).tag(config=True)
    idle_timeout = Float(
        3600.0,
        help="Destroy a session unused for this many seconds (a session with a running cell is "
        f"never idle); 0 never does. Environment: {_env('idle_timeout')}.",
    ).tag(config=True)
    recover_sessions = Bool(
        True,
        help="Kernels outlive a server that is killed (kill -9, a crash), and the server "
        "started again on the same state directory re-adopts them: same ids, names, owners "
        "and work directories; a cell still running finishes and its reply reaches the "
        "client. False: kernels die with the server. A server that stops normally (Ctrl-C, "
        f"SIGTERM) always stops its sessions. Environment: {_env('recover_sessions')}.",
    ).tag(config=True)
    orphan_timeout = Float(
        600.0,
        help="Destroy a session whose client holds a lease (the remote_kernel proxy does) "
        "and has been gone this many seconds: no request and no open channel, even with a "
        "cell running or waiting for input. A re-attaching kernel has this long to come "
        f"back. 0 never does. Environment: {_env('orphan_timeout')}.",
    ).tag(config=True)
    keep_work_dirs = Bool(
        False,
        help="Keep a destroyed session's work directory (under state_dir/sessions/<id>/work) "
        "instead of removing it; also for sessions a killed server left behind. "
        f"Environment: {_env('keep_work_dirs')}.",
    ).tag(config=True)
    kernel_start_timeout = Float(
        60.0,
        help=f"Seconds a kernel may take to start. Environment: {_env('kernel_start_timeout')}.",
    ).tag(config=True)
    max_run_output_bytes = Int(
        64 * 1024 * 1024,
        help="Output of one run kept for the client before the oldest is dropped (and reported). "
        f"Environment: {_env('max_run_output_bytes')}.",
    ).tag(config=True)
    max_request_bytes = Int(
        16 * 1024 * 1024,
        help="Largest request body accepted (413 above). "
        f"Environment: {_env('max_request_bytes')}.",
    ).tag(config=True)
    max_upload_files = Int(
        100, help=f"Most files in one upload (413 above). Environment: {_env('max_upload_files')}."
    ).tag(config=True)
    max_upload_bytes = Int(
        64 * 1024 * 1024,
        help=f"Largest uploaded file (413 above). Environment: {_env('max_upload_bytes')}.",
    ).tag(config=True)
    max_download_bytes = Int(
        64 * 1024 * 1024,
        help="Largest download, all archives together (413 above). "
        f"Environment: {_env('max_download_bytes')}.",
    ).tag(config=True)
    vfolder_root = Unicode(
        help="Folder holding each access key's folders (POST /folders), which its sessions "
        "mount (config.mounts / mount_map) and which outlive sessions. Environment: "
        f"{_env('vfolder_root')} (default: <state dir>/vfolders).",
    ).tag(config=True)
    debug = Bool(
        False, help=f"Include tracebacks in error bodies. Environment: {_env('debug')}."
    ).tag(config=True)
    sandbox = CaselessStrEnum(
        ["auto", "bubblewrap", "none"],
        default_value="auto",
        help="How sessions are isolated: 'bubblewrap' (each session's kernel, batch steps and "
        "terminals in a sandbox: system read-only, its own work directory at /home/work, no "
        "view of the state directory, other sessions or the server's environment; on a root "
        "server, a user of its own), 'none' (plain processes of the server's user), or 'auto' "
        "(bubblewrap when a working bwrap is installed, else none with a loud warning). "
        f"Environment: {_env('sandbox')}.",
    ).tag(config=True)
    sandbox_network = Bool(
        True,
        help="Whether sandboxed sessions have network access; False gives each session a "
        "network namespace of its own with nothing in it (the kernel then talks to the server "
        f"over IPC sockets). Needs sandbox = bubblewrap. Environment: {_env('sandbox_network')}.",
    ).tag(config=True)
    sandbox_ro_paths = List(
        Unicode(),
        help="More host paths sandboxed sessions see read-only at the same place (the system "
        "directories and the kernels' Python installations are shown already). "
        f"Environment: {_env('sandbox_ro_paths')} (a JSON list).",
    ).tag(config=True)
    sandbox_uid_base = Int(
        1_500_000_000,
        help="A root server runs each access key's sandboxed processes as a host user of its "
        "own, numbered from here (no /etc/passwd entry needed). "
        f"Environment: {_env('sandbox_uid_base')}.",
    ).tag(config=True)
    pool_size = Int(
        2,
        help="Kernels kept started ahead of time for each of pool_images, so that a new "
        "session answers at once; each is used by one session only. 0 turns the pool off. "
        "A create the pool cannot serve (another image, mounts, PYTHON*/LD_* variables in "
        "config.environ) starts its own kernel. Environment: "
        f"{_env('pool_size')}.",
    ).tag(config=True)
    pool_images = List(
        Unicode(),
        ["python"],
        help=f"Images the warm pool keeps kernels for. Environment: {_env('pool_images')} "
        "(a JSON list).",
    ).tag(config=True)
    default_resources = Dict(
        {"pids": 1024},
        help="Resource slots a session gets when its create request names none, as "
        """Backend.AI slots: {"cpu": 1, "mem": "2g", "pids": 1024}; without "mem", half of """
        """the machine's memory. Enforced with cgroups """
        "(v1 or v2) where the server may create them, else rlimits (memory as address "
        f"space; no CPU limit). Environment: {_env('default_resources')} (JSON).",
    ).tag(config=True)
    max_resources = Dict(
        {},
        help="The most one session may ask for in config.resources (400 above), e.g. "
        """{"cpu": 4, "mem": "16g"}; a slot named here is also the limit of sessions that """
        f"ask for nothing more. Environment: {_env('max_resources')} (JSON).",
    ).tag(config=True)

    _isolation: Isolation | None = None

    @default("state_dir")
    def _state_dir_default(self) -> str:
        return default_state_dir()

    @default("log_level")
    def _log_level_default(self) -> int:
        return logging.INFO

    @validate("poll_hold")
    def _check_hold(self, proposal: dict[str, Any]) -> float:
        value = float(proposal["value"])
        if not 0 < value <= 2:
            raise TraitError(f"poll_hold must be in (0, 2] seconds, not {value}.")
        return value

    @catch_config_error
    def initialize(self, argv: list[str] | None = None) -> None:
        self._load_environment()
        super().initialize(argv)
        self.load_config_file("remote_kernel_server_config", path=[os.getcwd()])
        if self.auth == "none" and not _is_loopback(self.ip):
            self.log.critical(
                "Refusing --auth none on %s: anonymous access is allowed only on loopback "
                "(127.0.0.1 or ::1). Create a keypair with `remote-kernel keys create` instead.",
                self.ip,
            )
            self.exit(2)

    def _load_environment(self) -> None:
        """Environment variables as the lowest-priority configuration."""
        values: dict[str, Any] = {}
        for name, trait in self.traits(config=True).items():
            raw = os.environ.get(_env(name))
            if raw is not None and self.class_traits().get(name) is trait:
                try:
                    values[name] = trait.from_string(raw)
                except Exception as exc:
                    self.log.critical("Bad value %r in %s: %s", raw, _env(name), exc)
                    self.exit(2)
        if values:
            self.update_config(Config({"ServerApp": values}))

    def make_isolation(self) -> Isolation:
        """The sandbox and limits these settings ask for (exits 2 if they cannot be had)."""
        if self._isolation is None:
            try:
                self._isolation = Isolation.configure(
                    self.sandbox,
                    state_dir=Path(self.state_dir),
                    network=self.sandbox_network,
                    default=_with_memory_default(Resources.parse(self.default_resources)),
                    maximum=Resources.parse(self.max_resources),
                    uid_base=self.sandbox_uid_base,
                    extra_ro=self.sandbox_ro_paths,
                )
            except (ValueError, RemoteKernelError) as exc:
                self.log.critical("%s", exc)
                self.exit(2)
                raise  # exit raises SystemExit; this keeps type checkers informed
            self._isolation.outlive_server = self.recover_sessions
        return self._isolation

    def make_manager(self) -> SessionManager:
        return SessionManager(
            Path(self.state_dir),
            isolation=self.make_isolation(),
            pool_size=self.pool_size,
            pool_images=tuple(self.pool_images),
            max_sessions_per_key=self.max_sessions_per_key,
            idle_timeout=self.idle_timeout,
            recover_sessions=self.recover_sessions,
            orphan_timeout=self.orphan_timeout,
            keep_work_dirs=self.keep_work_dirs,
            vfolder_root=Path(self.vfolder_root or Path(self.state_dir) / "vfolders"),
            runner_options={
                "start_timeout": self.kernel_start_timeout,
                "max_run_bytes": self.max_run_output_bytes,
            },
        )

    def settings(self) -> ServerSettings:
        """The handlers' view of these traits."""
        return ServerSettings(
            extensions=self.extensions,
            auth_required=self.auth == "keypair",
            poll_hold=self.poll_hold,
            poll_coalesce=self.poll_coalesce,
            push_coalesce=self.push_coalesce,
            orphan_timeout=self.orphan_timeout,
            debug=self.debug,
            max_request_bytes=self.max_request_bytes,
            max_upload_files=self.max_upload_files,
            max_upload_bytes=self.max_upload_bytes,
            max_download_bytes=self.max_download_bytes,
            isolation=self.make_isolation().describe(),
        )

    def make_app(self) -> web.Application:
        return make_app(self.make_manager(), KeyStore(self.state_dir), self.settings())

    def start(self) -> None:
        _return_freed_memory()
        logging.getLogger("remote_kernel").setLevel(int(self.log.getEffectiveLevel()))
        if not logging.getLogger().handlers:
            logging.basicConfig(format="[%(levelname)1.1s %(asctime)s %(name)s] %(message)s")
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        Path(self.state_dir).mkdir(parents=True, exist_ok=True, mode=0o700)
        stop = asyncio.Event()  # handlers first: a signal right after the banner must count
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        runner = web.AppRunner(self.make_app(), handle_signals=False, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.ip, self.port)
        try:
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            self.log.critical("Cannot listen on %s:%s: %s", self.ip, self.port, exc)
            self.exit(1)
        host, port = runner.addresses[0][:2]
        url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        keys = len(KeyStore(self.state_dir))
        iso = self.make_isolation()
        print(f"remote-kernel serve: serving on {url} (state dir {self.state_dir}, auth "
              f"{self.auth}, {keys} keypair(s), extensions {'on' if self.extensions else 'off'}, "
              f"sandbox {iso.mode}, limits {iso.limits})", flush=True)  # fmt: skip
        print(connect_hint(url, self.auth, keys, str(self.state_dir)), flush=True)
        await stop.wait()
        self.log.info("shutting down: stopping every session")
        await runner.cleanup()


def connect_hint(url: str, auth: str, keys: int, state_dir: str) -> str:
    """The lines after the banner: how to connect a kernel to this server (keypair, kernelspec).

    A server listening on every address (0.0.0.0, ::) is reached by this machine's name."""
    host = URL(url).host or ""
    if host in ("0.0.0.0", "::"):
        url = str(URL(url).with_host(socket.gethostname()))
    rk = command_name()
    keys_create = f"{rk} keys create --state-dir {state_dir}"
    lines = ["  connect a kernel to it (in a shell on the machine that runs Jupyter):"]
    if auth == "keypair":
        if keys == 0:
            lines.insert(0, f"  no keypairs yet: run `{keys_create}` (it prints one)")
        lines.append(f"    # a keypair of this server: `{keys_create}` prints a new one")
        lines.append(
            f"    export BACKEND_ENDPOINT={url} BACKEND_ACCESS_KEY=... BACKEND_SECRET_KEY=..."
        )
    else:
        lines.append(f"    export BACKEND_ENDPOINT={url}   # no keypair needed: auth is {auth}")
    lines.append(f'    {rk} install --display-name "Python (remote)"')
    lines.append(
        '  then pick "Python (remote)" in JupyterLab, Notebook or VS Code. Ctrl-C stops it.'
    )
    return "\n".join(lines)


def _with_memory_default(resources: Resources) -> Resources:
    """No memory limit named: half of this machine's memory, so that no one session can take
    the server (and every other session) down with it."""
    if resources.mem is not None:
        return resources
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (OSError, ValueError):
        return resources
    return Resources(cpu=resources.cpu, mem=total // 2, pids=resources.pids)


def _return_freed_memory() -> None:
    """Allocations of 128 KiB and more (output pages, file chunks) get mappings of their own
    (glibc's M_MMAP_THRESHOLD), so freeing them returns the memory to the system: after a run
    that printed 250 MB the server goes back to ~60 MB instead of staying at ~120 MB."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(-3, 128 * 1024)  # -3: M_MMAP_THRESHOLD


def _is_loopback(ip: str) -> bool:
    if ip == "localhost":
        return True
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False

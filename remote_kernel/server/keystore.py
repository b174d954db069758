"""The server's keypairs (``<state dir>/keypairs.json``, mode 0600) and ``remote-kernel keys``."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from traitlets import Unicode, default
from traitlets.config import Application

from ..auth import Keypair, generate_keypair
from ..errors import ConfigurationError

KEYPAIRS_FILE = "keypairs.json"


def default_state_dir() -> str:
    """``$REMOTE_KERNEL_STATE_DIR`` or ``$XDG_STATE_HOME/remote-kernel`` (``~/.local/state``)."""
    env = os.environ.get("REMOTE_KERNEL_STATE_DIR")
    if env:
        return env
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "remote-kernel")


class KeyStore:
    """Access key → secret, persisted as one JSON object readable only by its owner.

    The file is re-read when it changes on disk, so ``remote-kernel keys create`` takes effect on
    a running server without a restart.
    """

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / KEYPAIRS_FILE
        self._lock = threading.Lock()
        self._cache: dict[str, str] = {}
        self._stamp: tuple[int, int] | None = None

    def _load(self) -> dict[str, str]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return {}
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError) as exc:
                raise ConfigurationError(
                    f"Cannot read the keypair file {self.path}: {exc}"
                ) from exc
            self._cache = {str(k): str(v) for k, v in data.get("keypairs", {}).items()}
            self._stamp = stamp
        return self._cache

    def secret_for(self, access_key: str) -> str | None:
        """The secret of ``access_key``, or None when it is unknown."""
        with self._lock:
            return self._load().get(access_key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._load())

    def create(self) -> Keypair:
        """Generate, store and return a new keypair."""
        pair = generate_keypair()
        with self._lock:
            pairs = dict(self._load())
            pairs[pair.access_key] = pair.secret_key
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            tmp = self.path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump({"keypairs": pairs}, fh, indent=1)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
            self._stamp = None
        return pair


class KeysCreateApp(Application):
    """``remote-kernel keys create``: add a keypair and print it as two environment lines."""

    name = "remote-kernel-keys-create"
    description = (
        "Add a keypair to the server's state directory and print it as BACKEND_ACCESS_KEY=... "
        "and BACKEND_SECRET_KEY=... (the variables the Backend.AI SDK and the remote kernel read)."
    )
    state_dir = Unicode(
        help="Directory of the server's state (keypairs, session work dirs). "
        "Environment: REMOTE_KERNEL_STATE_DIR."
    ).tag(config=True)
    aliases = {"state-dir": "KeysCreateApp.state_dir"}

    @default("state_dir")
    def _state_dir_default(self) -> str:
        return default_state_dir()

    def start(self) -> None:
        pair = KeyStore(self.state_dir).create()
        print(f"BACKEND_ACCESS_KEY={pair.access_key}")
        print(f"BACKEND_SECRET_KEY={pair.secret_key}")


class KeysApp(Application):
    """``remote-kernel keys``: manage the server's keypairs."""

    name = "remote-kernel-keys"
    description = "Manage the keypairs of a remote-kernel server."
    subcommands = {"create": (KeysCreateApp, KeysCreateApp.description)}  # type: ignore[assignment]

    def start(self) -> None:
        if self.subapp is None:
            self.print_help()
            self.exit(2)
        else:
            self.subapp.start()

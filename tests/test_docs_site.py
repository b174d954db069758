"""The documentation site: every setting is in the generated references, every page is reachable.

``.ci/run`` builds the site with ``sphinx-build -W``; these tests are the cheap checks that hold
without Sphinx: the generator (``docs/gen_settings.py``) against the traits, the committed
references against the generator, and the toctree against the pages in ``docs/``.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_settings", DOCS / "gen_settings.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rows(markdown: str) -> dict[str, str]:
    """setting name → its table row."""
    return {m.group(1): m.group(0) for m in re.finditer(r"^\| `(\w+)` \|.*$", markdown, re.M)}


def test_every_server_setting_is_in_the_reference(gen: ModuleType) -> None:
    from remote_kernel.server.app import ServerApp

    names = set(ServerApp.class_own_traits(config=True))
    rows = _rows(gen.render())
    assert len(names) >= 20
    assert names == set(rows), "settings missing from or extra in server-settings.md"
    for name in names:
        trait = ServerApp.class_traits()[name]
        first_words = " ".join(trait.help.split()[:4])
        assert first_words in rows[name], f"{name}: its help text is not in the reference"


def test_every_kernel_setting_is_in_the_reference(gen: ModuleType) -> None:
    from ipykernel.kernelbase import Kernel

    from remote_kernel.proxy.kernel import RemoteKernel

    names = set(RemoteKernel.class_traits(config=True)) - set(Kernel.class_traits(config=True))
    rows = _rows(gen.render_kernel())
    assert {"endpoint", "access_key", "secret_key", "image", "resources"} <= names
    assert names == set(rows), "settings missing from or extra in kernel-settings.md"
    for name in names:
        trait = RemoteKernel.class_traits()[name]
        first_words = " ".join(trait.help.split()[:4])
        assert first_words in rows[name], f"{name}: its help text is not in the reference"


def test_the_references_are_written_where_the_toctree_expects_them(
    gen: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gen, "TARGET", tmp_path / "server-settings.md")
    monkeypatch.setattr(gen, "KERNEL_TARGET", tmp_path / "kernel-settings.md")
    assert gen.write_all() == [tmp_path / "server-settings.md", tmp_path / "kernel-settings.md"]
    assert gen.write_all() == []  # unchanged: not rewritten (Sphinx would rebuild them)
    assert (tmp_path / "kernel-settings.md").read_text() == gen.render_kernel()
    assert gen.KERNEL_TARGET.name == "kernel-settings.md"


def test_every_page_is_in_the_toctree() -> None:
    index = (DOCS / "index.md").read_text()
    toctrees = re.findall(r"```\{toctree\}\n(.*?)```", index, re.S)
    assert toctrees, "docs/index.md has no toctree"
    entries = {
        line.strip() for tree in toctrees for line in tree.splitlines()
        if line.strip() and not line.startswith(":")
    }  # fmt: skip
    generated = {"kernel-settings"}  # written by docs/conf.py at build time
    pages = ({p.stem for p in DOCS.glob("*.md")} | generated) - {"index"}
    assert pages <= entries, f"pages missing from the toctree: {sorted(pages - entries)}"
    assert entries <= pages, f"toctree entries without a page: {sorted(entries - pages)}"


def test_the_build_is_offline_and_strict() -> None:
    conf = (DOCS / "conf.py").read_text()
    extensions = re.search(r"^extensions = \[(.*?)\]", conf, re.M | re.S)
    assert extensions and extensions.group(1).strip() == '"myst_parser"'  # nothing that fetches
    assert "gen_settings.write_all()" in conf
    ci = (DOCS.parent / ".ci" / "run").read_text()
    assert re.search(r"sphinx-build .*-W --keep-going .*\bdocs\b", ci)
    assert '".[test,docs]"' in ci


def _messages() -> dict[str, str]:
    """Every message template a user can see in a notebook or from a command."""
    from remote_kernel import credentials, kernelspec, kernelspec_apps, signed_http
    from remote_kernel.proxy import cell, replies

    return {
        "SESSION_FAILED": cell.SESSION_FAILED,
        "SESSION_LOST": cell.SESSION_LOST,
        "NEW_SESSION_NOTE": cell.NEW_SESSION_NOTE,
        "WIDGET_NOTE": cell.WIDGET_NOTE,
        "UNSHOWN_NOTE": cell.UNSHOWN_NOTE,
        "STDIN_REFUSED": replies.STDIN_REFUSED,
        "_UNREACHABLE": signed_http._UNREACHABLE,
        "_DROPPED": signed_http._DROPPED,
        "_TIMEOUT": signed_http._TIMEOUT,
        "_BAD_ENDPOINT": signed_http._BAD_ENDPOINT,
        "_HALF_KEYPAIR": signed_http._HALF_KEYPAIR,
        "_AUTH_FAILED": signed_http._AUTH_FAILED,
        "_AUTH_MISSING": signed_http._AUTH_MISSING,
        "_CLOCK_SKEW": signed_http._CLOCK_SKEW,
        "_BAD_FILE": credentials._BAD_FILE,
        "_BAD_NAME": kernelspec._BAD_NAME,
        "_EACCES": kernelspec_apps._EACCES,
    }


def _plain(text: str) -> str:
    text = re.sub(r"^> ?", "", text, flags=re.M)
    return " ".join(text.replace("`", "").split())


def test_every_user_facing_message_is_in_troubleshooting() -> None:
    page = _plain((DOCS / "troubleshooting.md").read_text())
    missing = []
    for name, template in _messages().items():
        pieces = [_plain(p) for p in re.split(r"\{[^}]*\}", template)]
        longest = max(pieces, key=len)
        if longest[:60] not in page:
            missing.append(f"{name}: {longest[:60]!r}")
    assert not missing, "docs/troubleshooting.md does not explain:\n" + "\n".join(missing)


def test_pages_point_at_the_protocol_in_this_repository() -> None:
    assert (DOCS / "protocol.md").is_file()
    for page in [*DOCS.glob("*.md"), DOCS.parent / "README.md"]:
        assert "shared/protocol.md" not in page.read_text(), f"{page.name} names shared/"
    protocol = (DOCS / "protocol.md").read_text()
    from remote_kernel.protocol import FEATURES

    for feature in FEATURES:  # every extension the server can offer is specified
        assert f"`{feature}`" in protocol, feature
    assert "## Base layer" in protocol and "### Authentication" in protocol

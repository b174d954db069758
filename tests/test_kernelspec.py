"""kernel.json generation (pure), install/list/remove through the CLI, and the credentials file."""

from __future__ import annotations

import errno
import json
import os
import stat
import sys
from pathlib import Path

import pytest
from jupyter_client.kernelspec import KernelSpecManager

from remote_kernel import credentials, kernelspec
from remote_kernel.cli import main
from remote_kernel.errors import ConfigurationError

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def jupyter_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """User data dir, a prefix on JUPYTER_PATH and the config home, all inside ``tmp_path``."""
    monkeypatch.setenv("JUPYTER_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "prefix" / "share" / "jupyter"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("REMOTE_KERNEL_CREDENTIALS", raising=False)
    for var in ("BACKEND_ENDPOINT", "BACKEND_ACCESS_KEY", "BACKEND_SECRET_KEY"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path


def read_spec(path: Path) -> dict:
    return json.loads((path / "kernel.json").read_text())


# ---------------------------------------------------------------------------------------------
# pure
# ---------------------------------------------------------------------------------------------


def test_kernel_dict_defaults():
    assert kernelspec.get_kernel_dict() == {
        "argv": [sys.executable, "-m", "remote_kernel", "-f", "{connection_file}"],
        "display_name": "Python (remote)",
        "language": "python",
        "interrupt_mode": "message",
        "env": {"PYDEVD_DISABLE_FILE_VALIDATION": "1"},
        "metadata": {"remote_kernel": {"endpoint": None, "image": None, "resources": {}}},
    }


def test_kernel_dict_with_every_setting():
    spec = kernelspec.get_kernel_dict(
        endpoint="https://api.example.com",
        image="cr.backend.ai/stable/julia:1.9",
        resources={"cpu": 2, "mem": "4g"},
        display_name="Julia on the cluster",
        env={"A": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "0"},
        executable="/opt/env/bin/python",
    )
    assert spec == {
        "argv": [
            "/opt/env/bin/python",
            "-m",
            "remote_kernel",
            "-f",
            "{connection_file}",
            "--RemoteKernel.endpoint=https://api.example.com",
            "--RemoteKernel.image=cr.backend.ai/stable/julia:1.9",
            '--RemoteKernel.resources={"cpu": 2, "mem": "4g"}',
        ],
        "display_name": "Julia on the cluster",
        "language": "julia",
        "interrupt_mode": "message",
        "env": {"PYDEVD_DISABLE_FILE_VALIDATION": "0", "A": "1"},
        "metadata": {
            "remote_kernel": {
                "endpoint": "https://api.example.com",
                "image": "cr.backend.ai/stable/julia:1.9",
                "resources": {"cpu": 2, "mem": "4g"},
            }
        },
    }
    assert "debugger" not in spec["metadata"]


@pytest.mark.parametrize(
    ("image", "language", "display", "name"),
    [
        (None, "python", "Python (remote)", "remote-python"),
        ("python:3.11", "python", "Python (remote)", "remote-python"),
        (
            "cr.backend.ai/stable/python-pytorch:2.1-gpu",
            "python",
            "Python (remote)",
            "remote-python",
        ),
        ("python3.12-slim", "python", "Python (remote)", "remote-python"),
        ("tensorflow:2.15", "python", "Python (remote)", "remote-python"),
        ("julia:1.9", "julia", "Julia (remote)", "remote-julia"),
        ("registry.local/r-base:4.3", "R", "R (remote)", "remote-r"),
        ("cpp:17", "c++", "C++ (remote)", "remote-cpp"),
        ("nodejs:20", "javascript", "Javascript (remote)", "remote-javascript"),
    ],
)
def test_language_from_image(image, language, display, name):
    assert kernelspec.language_from_image(image) == language
    assert kernelspec.default_display_name(image) == display
    assert kernelspec.default_kernel_name(image) == name


def test_parse_resources_and_env():
    assert kernelspec.parse_resources("cpu=2, mem=4g,cuda.shares=0.5,") == {
        "cpu": 2,
        "mem": "4g",
        "cuda.shares": 0.5,
    }
    assert kernelspec.parse_resources("") == {}
    assert kernelspec.parse_env(["A=1", "B=x=y", "C="]) == {"A": "1", "B": "x=y", "C": ""}
    with pytest.raises(ConfigurationError, match="slot=value"):
        kernelspec.parse_resources("cpu")
    with pytest.raises(ConfigurationError, match="NAME=value"):
        kernelspec.parse_env(["=1"])


@pytest.mark.parametrize("name", ["remote", "Remote.GPU_2", "a-b"])
def test_valid_names(name):
    assert kernelspec.validate_name(name) == name


@pytest.mark.parametrize("name", ["", "bad name", "../x", "a/b", "é", "x;y"])
def test_invalid_names(name):
    with pytest.raises(ConfigurationError, match="Invalid kernelspec name"):
        kernelspec.validate_name(name)


def test_write_kernel_spec_copies_logos(tmp_path):
    path = Path(kernelspec.write_kernel_spec(tmp_path / "spec", image="python:3.11"))
    assert sorted(p.name for p in path.iterdir()) == [
        "kernel.json",
        "logo-32x32.png",
        "logo-64x64.png",
        "logo-svg.svg",
    ]
    assert (path / "logo-64x64.png").read_bytes().startswith(b"\x89PNG")
    assert read_spec(path)["metadata"]["remote_kernel"]["image"] == "python:3.11"


# ---------------------------------------------------------------------------------------------
# CLI: install / list / remove
# ---------------------------------------------------------------------------------------------


def test_install_list_remove_in_prefix(jupyter_env, capsys):
    prefix = jupyter_env / "prefix"
    code = main(
        [
            "install",
            f"--prefix={prefix}",
            "--name=remote-gpu",
            "--display-name=Python (remote GPU)",
            "--endpoint=http://127.0.0.1:8091",
            "--image=python:3.11",
            "--resources=cpu=4,mem=16g,cuda.device=1",
            "--env=HTTP_PROXY=http://proxy:3128",
            "--env=FOO=bar",
        ]
    )
    assert code == 0
    spec_dir = prefix / "share" / "jupyter" / "kernels" / "remote-gpu"
    assert "Installed kernelspec remote-gpu" in capsys.readouterr().out
    spec = read_spec(spec_dir)
    assert spec["argv"][:5] == [sys.executable, "-m", "remote_kernel", "-f", "{connection_file}"]
    assert os.path.isabs(spec["argv"][0])
    assert spec["display_name"] == "Python (remote GPU)"
    assert spec["env"] == {
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        "HTTP_PROXY": "http://proxy:3128",
        "FOO": "bar",
    }
    assert spec["metadata"]["remote_kernel"]["resources"] == {
        "cpu": 4,
        "mem": "16g",
        "cuda.device": 1,
    }
    assert (spec_dir / "logo-32x32.png").is_file()
    assert KernelSpecManager().get_kernel_spec("remote-gpu").interrupt_mode == "message"

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "remote-gpu" in out and "Python (remote GPU)" in out
    assert "http://127.0.0.1:8091" in out and "python:3.11" in out and str(spec_dir) in out
    assert main(["list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in listed] == ["remote-gpu"]

    assert main(["remove", "remote-gpu"]) == 0
    assert f"Removed kernelspec remote-gpu from {spec_dir}" in capsys.readouterr().out
    assert not spec_dir.exists()
    assert main(["list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []

    assert main(["remove", "remote-gpu"]) == 1
    assert "No kernelspec named 'remote-gpu'" in capsys.readouterr().err


def test_install_defaults_to_user_scope(jupyter_env, capsys):
    assert main(["install"]) == 0
    spec_dir = jupyter_env / "data" / "kernels" / "remote-python"
    spec = read_spec(spec_dir)
    assert spec["display_name"] == "Python (remote)"
    assert spec["metadata"]["remote_kernel"]["endpoint"] is None
    assert "No keypair saved" in capsys.readouterr().out


def test_endpoint_defaults_to_environment(jupyter_env, monkeypatch):
    monkeypatch.setenv("BACKEND_ENDPOINT", "http://10.0.0.5:8090")
    assert main(["install", "--name=env-ep"]) == 0
    spec = read_spec(jupyter_env / "data" / "kernels" / "env-ep")
    assert "--RemoteKernel.endpoint=http://10.0.0.5:8090" in spec["argv"]


def test_second_run_does_not_inherit_settings(jupyter_env):
    assert main(["install", "--name=first", "--display-name=First", "--image=julia:1.9"]) == 0
    assert main(["install", "--name=second"]) == 0
    spec = read_spec(jupyter_env / "data" / "kernels" / "second")
    assert spec["display_name"] == "Python (remote)"
    assert spec["language"] == "python"


def test_secret_goes_to_0600_file_never_kernel_json(jupyter_env, monkeypatch, capsys):
    monkeypatch.setenv("BACKEND_ACCESS_KEY", "AKIATESTKEY")
    monkeypatch.setenv("BACKEND_SECRET_KEY", "very-secret-value-123")
    assert main(["install", "--endpoint=http://127.0.0.1:8091/"]) == 0
    out = capsys.readouterr().out
    spec_dir = jupyter_env / "data" / "kernels" / "remote-python"
    for path in spec_dir.iterdir():
        assert b"very-secret-value-123" not in path.read_bytes()
    assert "AKIATESTKEY" not in (spec_dir / "kernel.json").read_text()

    cred = jupyter_env / "config" / "remote-kernel" / "credentials.json"
    assert credentials.credentials_path() == cred
    assert str(cred) in out and "0600" in out
    assert stat.S_IMODE(cred.stat().st_mode) == 0o600
    assert stat.S_IMODE(cred.parent.stat().st_mode) == 0o700
    expected = {
        "endpoint": "http://127.0.0.1:8091",
        "access_key": "AKIATESTKEY",
        "secret_key": "very-secret-value-123",
    }
    assert credentials.load_credentials("http://127.0.0.1:8091") == expected
    assert credentials.load_credentials("http://127.0.0.1:8091/") == expected
    assert credentials.load_credentials() == expected
    assert credentials.load_credentials("http://elsewhere:1") is None


def test_access_key_flag_without_secret_fails_headless(jupyter_env, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", open(os.devnull))  # noqa: SIM115
    assert main(["install", "--access-key=AK"]) == 1
    assert "BACKEND_SECRET_KEY" in capsys.readouterr().err


def test_bad_name_refused(jupyter_env, capsys):
    assert main(["install", "--name=bad name"]) == 1
    assert "Invalid kernelspec name 'bad name'" in capsys.readouterr().err
    assert not (jupyter_env / "data" / "kernels").exists()


def test_remove_refuses_foreign_spec(jupyter_env, capsys):
    foreign = jupyter_env / "prefix" / "share" / "jupyter" / "kernels" / "python-local"
    foreign.mkdir(parents=True)
    (foreign / "kernel.json").write_text(
        json.dumps(
            {"argv": ["python", "-m", "ipykernel"], "display_name": "P", "language": "python"}
        )
    )
    assert main(["remove", "python-local"]) == 1
    assert "not installed by remote-kernel" in capsys.readouterr().err
    assert foreign.is_dir()
    assert main(["list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_remove_needs_a_name(jupyter_env, capsys):
    assert main(["remove"]) == 1
    assert "name the kernelspec" in capsys.readouterr().err


def test_permission_error_hints_at_user_scope(jupyter_env, monkeypatch, capsys):
    def denied(self, source_dir, kernel_name=None, user=False, replace=None, prefix=None):
        raise PermissionError(errno.EACCES, "Permission denied", "/usr/share/jupyter/kernels/x")

    monkeypatch.setattr(KernelSpecManager, "install_kernel_spec", denied)
    assert main(["install", "--sys-prefix"]) == 1
    err = capsys.readouterr().err
    assert "Permission denied" in err and "--user" in err and "--sys-prefix" in err


def test_install_help_lists_options(capsys):
    assert main(["install", "--help"]) == 0
    out = capsys.readouterr().out
    for option in (
        "--name",
        "--display-name",
        "--endpoint",
        "--image",
        "--resources",
        "--env",
        "--access-key",
        "--user",
        "--sys-prefix",
        "--prefix",
    ):
        assert option in out, option
    assert main(["list", "--help"]) == 0
    assert "--json" in capsys.readouterr().out


def test_prefix_and_sys_prefix_conflict(jupyter_env, capsys):
    assert main(["install", "--sys-prefix", f"--prefix={jupyter_env}"]) == 1
    assert "one of --prefix and --sys-prefix" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# credentials file
# ---------------------------------------------------------------------------------------------


def test_credentials_roundtrip_and_lookup(jupyter_env):
    assert credentials.load_credentials() is None
    credentials.save_credentials("http://a:1", "AK1", "SK1")
    credentials.save_credentials(None, "AK0", "SK0")  # for any endpoint, and now the default
    credentials.save_credentials("http://b:2/", "AK2", "SK2")
    assert credentials.load_credentials("http://a:1")["secret_key"] == "SK1"
    assert credentials.load_credentials("http://b:2")["access_key"] == "AK2"
    assert credentials.load_credentials()["access_key"] == "AK2"  # the last saved is the default
    fallback = credentials.load_credentials("http://c:3")
    assert fallback == {"endpoint": "http://c:3", "access_key": "AK0", "secret_key": "SK0"}
    path = credentials.credentials_path()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in path.parent.iterdir()] == ["credentials.json"]  # no temp files left


def test_credentials_path_override_and_bad_file(jupyter_env, monkeypatch):
    target = jupyter_env / "elsewhere" / "creds.json"
    monkeypatch.setenv("REMOTE_KERNEL_CREDENTIALS", str(target))
    assert credentials.credentials_path() == target
    target.parent.mkdir()
    target.write_text("{not json")
    with pytest.raises(ConfigurationError, match=r"creds\.json is not valid JSON"):
        credentials.load_credentials()
    with pytest.raises(ConfigurationError):
        credentials.save_credentials("http://a:1", "AK", "")

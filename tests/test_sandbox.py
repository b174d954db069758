"""The pure parts of isolation: resource slots, the bwrap command, cgroup files, sandbox users.

The sandbox itself is exercised for real in tests/test_isolation.py; here each rule is checked
on its own (cgroup v2 on a directory tree shaped like cgroupfs, since CI's machine has v1).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jupyter_client.provisioning.factory import KernelProvisionerFactory

from remote_kernel.errors import InvalidAPIParamsError
from remote_kernel.server.limits import CgroupTree, Resources, format_size, parse_size
from remote_kernel.server.provisioner import SandboxProvisioner
from remote_kernel.server.sandbox import (
    HOME,
    SandboxPlan,
    SandboxUsers,
    python_paths,
    sandbox_command,
    sandbox_env,
)

MIB = 1024 * 1024


@pytest.mark.parametrize(
    ("text", "size"),
    [("512m", 512 * MIB), ("1g", 1024 * MIB), ("1.5GiB", 1536 * MIB), ("256MB", 256 * MIB),
     (268435456, 268435456), ("64k", 65536), ("100", 100)],
)  # fmt: skip
def test_parse_size(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["lots", "-1m", "0", 0, True, "1x", None, [1]])
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(InvalidAPIParamsError, match="'mem' must be a"):
        parse_size(bad)


def test_format_size() -> None:
    assert [format_size(n) for n in (256 * MIB, 1536 * MIB, 2048, 10)] == [
        "256 MiB", "1.5 GiB", "2 KiB", "10 bytes",
    ]  # fmt: skip


def test_resources_parse_defaults_and_maximum() -> None:
    asked = Resources.parse({"cpu": "2", "mem": "512m", "cuda.shares": 0})
    assert asked == Resources(cpu=2.0, mem=512 * MIB)
    default = Resources(mem=256 * MIB, pids=1024)
    assert Resources.parse(None).within(default, Resources()) == Resources(mem=256 * MIB, pids=1024)
    assert asked.within(default, Resources()) == Resources(cpu=2.0, mem=512 * MIB, pids=1024)
    # a maximum caps what is not asked for, and refuses what is asked above it
    assert Resources().within(Resources(), Resources(mem=MIB)) == Resources(mem=MIB)
    with pytest.raises(InvalidAPIParamsError) as info:
        asked.within(default, Resources(mem=256 * MIB))
    assert str(info.value) == (
        "The session asks for mem 512 MiB; this server allows at most 256 MiB per session "
        "(ServerApp.max_resources)."
    )
    assert asked.to_json() == {"cpu": 2.0, "mem": str(512 * MIB)}
    assert Resources(cpu=0.5, mem=MIB, pids=8).describe() == "0.5 CPU, 1 MiB memory, 8 processes"


@pytest.mark.parametrize(
    ("raw", "words"),
    [({"gpu": 1}, "no resource slot 'gpu'"), ({"cpu": "many"}, "'cpu' must be a positive"),
     ({"pids": 0}, "'pids' must be a positive integer"), ([1], "must be an object")],
)  # fmt: skip
def test_resources_parse_rejects(raw: object, words: str) -> None:
    with pytest.raises(InvalidAPIParamsError, match=words):
        Resources.parse(raw)


def _plan(**changes: object) -> SandboxPlan:
    fields: dict[str, object] = {
        "bwrap": "/usr/bin/bwrap", "work_dir": "/srv/state/sessions/s1/work",
        "ro_paths": ("/usr", "/opt/envs/py/venv"), "rw_paths": ("/srv/state/vfolders/k/data",),
        "uid": 1500000000, "gid": 1500000000, "ipython_dir": "/srv/state/sessions/s1/ipython",
    }  # fmt: skip
    fields.update(changes)
    return SandboxPlan(**fields)  # type: ignore[arg-type]


def _pairs(argv: list[str], flag: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == flag]


def test_sandbox_command_shows_only_what_the_plan_says() -> None:
    argv = sandbox_command(_plan(), ["python", "-m", "ipykernel_launcher"], info_fd=7)
    assert argv[0] == "/usr/bin/bwrap"
    for flag in ("--unshare-pid", "--unshare-ipc", "--unshare-uts", "--new-session"):
        assert flag in argv
    assert "--unshare-net" not in argv and "--die-with-parent" not in argv
    assert _pairs(argv, "--ro-bind") == [("/usr", "/usr"), ("/opt/envs/py/venv",) * 2]
    assert _pairs(argv, "--bind") == [
        ("/srv/state/sessions/s1/work", HOME),
        ("/srv/state/sessions/s1/ipython", "/home/.ipython"),
        ("/srv/state/vfolders/k/data",) * 2,
    ]
    # parents of what is shown are plain 0755 directories, created before the binds
    dirs = [argv[i + 1] for i, a in enumerate(argv) if a == "--dir"]
    assert dirs == ["/opt", "/srv", "/opt/envs", "/srv/state", "/opt/envs/py",
                    "/srv/state/vfolders", "/srv/state/vfolders/k"]  # fmt: skip
    assert argv.index("--tmpfs") < argv.index("--ro-bind")
    assert argv[argv.index("--info-fd") + 1] == "7"
    assert argv[argv.index("--unsetenv") + 1] == "JPY_PARENT_PID"
    tail = argv[argv.index("--") + 1 :]
    assert tail == [
        "setpriv", "--reuid=1500000000", "--regid=1500000000", "--clear-groups",
        "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
        "python", "-m", "ipykernel_launcher",
    ]  # fmt: skip


def test_sandbox_command_network_limits_and_no_sandbox() -> None:
    procs = ("/cg/memory/s1/cgroup.procs", "/cg/pids/s1/cgroup.procs")
    argv = sandbox_command(
        _plan(network=False, cgroup_procs=procs), ["true"], new_session=False, die_with_parent=True
    )
    assert argv[:2] == ["/bin/sh", "-c"]
    assert argv[2] == (
        "echo $$ > /cg/memory/s1/cgroup.procs && echo $$ > /cg/pids/s1/cgroup.procs && "
        'exec "$0" "$@"'
    )
    assert argv[3] == "/usr/bin/bwrap" and "--unshare-net" in argv and "--die-with-parent" in argv
    assert "--new-session" not in argv
    # no sandbox, no limits: the command itself; rlimits only: prlimit in front
    assert sandbox_command(_plan(bwrap=""), ["true"]) == ["true"]
    assert sandbox_command(_plan(bwrap="", rlimits={"as": 10, "nproc": 5}), ["true"]) == [
        "prlimit", "--as=10", "--nproc=5", "--", "true",
    ]  # fmt: skip


def test_plan_round_trips_through_json() -> None:
    plan = _plan(rlimits={"as": 1}, cgroup_procs=("/x",))
    assert SandboxPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan


def test_sandbox_env_is_a_fixed_set_plus_the_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "leak")
    monkeypatch.setenv("LANG", "de_DE.UTF-8")
    env = sandbox_env({"DEBUG": "1", "HOME": "/home/work"}, path_dirs=["/opt/py/bin"])
    assert env == {
        "LANG": "de_DE.UTF-8", "HOME": HOME, "USER": "work", "LOGNAME": "work",
        "SHELL": "/bin/sh", "PATH": "/opt/py/bin:/usr/local/bin:/usr/bin:/bin",
        "IPYTHONDIR": "/home/.ipython", "TMPDIR": "/tmp", "DEBUG": "1",
    }  # fmt: skip


def test_python_paths_follow_a_venv_to_its_base(tmp_path: Path) -> None:
    base = tmp_path / "base"
    (base / "bin").mkdir(parents=True)
    (base / "bin" / "python3.11").write_text("")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(base / "bin" / "python3.11")
    (venv / "pyvenv.cfg").write_text(f"home = {base / 'bin'}\n")
    assert python_paths(str(venv / "bin" / "python")) == [str(venv), str(base)]
    assert python_paths("/usr/bin/python3") == []  # /usr is shown anyway


def test_sandbox_users_are_per_key_and_persistent(tmp_path: Path) -> None:
    users = SandboxUsers(tmp_path / "sandbox-users.json", 2000)
    assert [users.uid_for(k) for k in ("A", "B", "A")] == [2000, 2001, 2000]
    again = SandboxUsers(tmp_path / "sandbox-users.json", 2000)
    assert again.uid_for("B") == 2001 and again.uid_for("C") == 2002
    assert (tmp_path / "sandbox-users.json").stat().st_mode & 0o777 == 0o600


def _fake_v2(tmp_path: Path) -> Path:
    """/proc and a cgroup2 mount shaped like a systemd service's cgroup."""
    proc = tmp_path / "proc" / "self"
    proc.mkdir(parents=True)
    mount = tmp_path / "cgroup"
    own = mount / "system.slice" / "rk.service"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (own / "cgroup.procs").write_text("4242\n")
    (own / "cgroup.subtree_control").write_text("")
    (mount / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (proc / "cgroup").write_text("0::/system.slice/rk.service\n")
    (proc / "mountinfo").write_text(
        f"30 23 0:26 / {mount} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
        "22 1 0:21 / /proc rw - proc proc rw\n"
    )
    return tmp_path / "proc"


def test_cgroup_v2_tree_and_session_limits(tmp_path: Path) -> None:
    tree = CgroupTree.detect(proc=_fake_v2(tmp_path))
    assert tree is not None and tree.name == "cgroup-v2"
    own = tmp_path / "cgroup" / "system.slice" / "rk.service"
    # the server moved into a leaf ("no internal processes"), controllers enabled below it
    assert (own / "server" / "cgroup.procs").read_text() == "4242"
    assert (own / "cgroup.subtree_control").read_text() == "+memory +pids +cpu"
    base = own / "remote-kernel"
    session_dir = base / "s1"
    session_dir.mkdir(parents=True)  # cgroupfs makes the files; here the test does
    (session_dir / "memory.swap.max").write_text("max")
    cg = tree.create("s1", Resources(cpu=0.5, mem=256 * MIB, pids=64))
    assert (session_dir / "memory.max").read_text() == str(256 * MIB)
    assert (session_dir / "memory.swap.max").read_text() == "0"
    assert (session_dir / "pids.max").read_text() == "64"
    assert (session_dir / "cpu.max").read_text() == "50000 100000"
    assert cg.procs_files == (str(session_dir / "cgroup.procs"),)
    (session_dir / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert cg.oom_kills() == 1


def test_cgroup_v1_session_limits(tmp_path: Path) -> None:
    tree = CgroupTree(1, {c: tmp_path / c / "remote-kernel" for c in ("memory", "pids", "cpu")})
    for base in tree.bases.values():
        (base / "s1").mkdir(parents=True)
    (tmp_path / "memory" / "remote-kernel" / "s1" / "memory.memsw.limit_in_bytes").write_text("")
    cg = tree.create("s1", Resources(cpu=2, mem=MIB, pids=10))
    d = {c: tmp_path / c / "remote-kernel" / "s1" for c in ("memory", "pids", "cpu")}
    assert (d["memory"] / "memory.limit_in_bytes").read_text() == str(MIB)
    assert (d["memory"] / "memory.memsw.limit_in_bytes").read_text() == str(MIB)
    assert (d["pids"] / "pids.max").read_text() == "10"
    assert (d["cpu"] / "cpu.cfs_quota_us").read_text() == "200000"
    assert len(cg.procs_files) == 3
    (d["memory"] / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert cg.oom_kills() == 2


def test_provisioner_is_registered_by_name() -> None:
    factory = KernelProvisionerFactory.instance()
    assert "remote-kernel-sandbox" in factory.provisioners
    assert factory.provisioners["remote-kernel-sandbox"].load() is SandboxProvisioner


def test_sweep_removes_only_old_empty_session_cgroups(tmp_path: Path) -> None:
    import os
    import time

    base = tmp_path / "memory" / "remote-kernel"
    old, fresh = base / "old-session", base / "fresh-session"
    old.mkdir(parents=True)
    fresh.mkdir()
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    tree = CgroupTree(1, {"memory": base})
    assert tree.sweep() == 1
    assert not old.exists() and fresh.exists()

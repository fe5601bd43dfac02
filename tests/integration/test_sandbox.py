"""The workspace sandbox against real escape attempts, real limits and real timeouts.

This machine type (and CI) allows unprivileged user namespaces, so isolation must be on here:
a test that found it off would otherwise pass by testing the fallback.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentledger.actors.sandbox import (
    CommandResult,
    Limits,
    SandboxViolation,
    ToolError,
    ToolTimeout,
    Workspace,
)
from agentledger.actors.tools import ToolContext, default_registry

REPO_FILE = Path(__file__).resolve().parents[2] / "pyproject.toml"


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    workspace = Workspace(tmp_path / "my workspace")  # a space in the path, on purpose
    assert workspace.isolated, "unshare works on this machine type; isolation must be on"
    return workspace


def python(ws: Workspace, code: str, **kwargs: object) -> CommandResult:
    return ws.run(["python3", "-I", "-c", code], timeout_s=10, **kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------- paths


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("../x", "leads outside the workspace"),
        ("a/../../x", "leads outside the workspace"),
        ("/etc/passwd", "is absolute"),
        ("~/x", "names a home directory"),
        ("", "empty path"),
        ("  ", "empty path"),
        ("a\x00b", "NUL byte"),
    ],
)
def test_resolve_refuses_escapes(ws: Workspace, path: str, reason: str) -> None:
    with pytest.raises(SandboxViolation, match=reason) as caught:
        ws.resolve(path)
    if path.strip():
        assert repr(path) in str(caught.value)


def test_resolve_refuses_symlinks_leading_outside(ws: Workspace) -> None:
    (ws.root / "passwd").symlink_to("/etc/passwd")
    (ws.root / "up").symlink_to("..")
    with pytest.raises(SandboxViolation, match=r"'passwd' leads outside .*through a symlink"):
        ws.resolve("passwd")
    with pytest.raises(SandboxViolation, match="'up/x' leads outside"):
        ws.resolve("up/x")


def test_resolve_accepts_paths_inside(ws: Workspace) -> None:
    (ws.root / "d").mkdir()
    (ws.root / "inner").symlink_to("d")
    assert ws.resolve("a/../b.txt") == ws.root / "b.txt"
    assert ws.resolve("inner/new.txt") == ws.root / "d" / "new.txt"
    assert ws.resolve(".") == ws.root


def test_link_planted_by_sandboxed_code_cannot_be_followed_by_tools(ws: Workspace) -> None:
    python(ws, "import os; os.symlink('/etc/passwd', 'p'); os.symlink('/', 'r')")
    registry = default_registry()
    ctx = ToolContext(ws, None, "k")
    with pytest.raises(SandboxViolation, match="read_file: path 'p' leads outside"):
        registry.execute("read_file", {"path": "p"}, ctx)
    with pytest.raises(SandboxViolation, match="write_file: path 'r/tmp/x' leads outside"):
        registry.execute("write_file", {"path": "r/tmp/x", "content": "x"}, ctx)


# ---------------------------------------------------------------- isolation


def test_files_outside_the_workspace_are_invisible(ws: Workspace) -> None:
    assert REPO_FILE.is_file()  # visible from here...
    home = Path.home()
    assert home.is_dir()
    code = f"""
import os, sys
for path in [{str(REPO_FILE)!r}, "/etc/shadow", {str(home)!r}, {str(ws.root)!r}, "/work"]:
    print(path, os.path.exists(path))
try:
    open({str(REPO_FILE)!r}).read()
except OSError as exc:
    sys.exit(type(exc).__name__)
"""
    result = python(ws, code)
    assert result.exit_code == 1, result  # ...and not from inside
    assert result.stderr == "FileNotFoundError\n"
    assert result.stdout.split("\n")[:5] == [
        f"{REPO_FILE} False",
        "/etc/shadow False",
        f"{home} False",
        f"{ws.root} False",
        "/work False",
    ]


def test_the_sandbox_sees_only_a_minimal_root(ws: Workspace) -> None:
    result = python(
        ws,
        "import os, json; print(json.dumps(os.listdir('/'))); print(os.getcwd()); "
        "print(open('/etc/passwd').read().count('\\n'))",
    )
    roots, cwd, accounts = result.stdout.splitlines()
    allowed = {"bin", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "tmp", "usr"}
    assert set(json.loads(roots)) <= allowed | {"workspace"}
    assert cwd == "/workspace"
    assert accounts == "2"  # root and nobody, not the host's accounts


def test_host_processes_are_invisible(ws: Workspace) -> None:
    code = (
        f"import os, json; print(json.dumps([os.path.exists('/proc/{os.getpid()}'), "
        "sorted(int(p) for p in os.listdir('/proc') if p.isdigit())]))"
    )
    visible, pids = json.loads(python(ws, code).stdout)
    assert visible is False
    assert pids[0] == 1 and len(pids) <= 3  # a fresh PID namespace: the supervisor sh, python


def test_environment_is_scrubbed(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTLEDGER_TEST_SECRET", "hunter2")
    result = python(ws, "import os, json; print(json.dumps(dict(os.environ)))")
    assert "hunter2" not in result.stdout
    env = json.loads(result.stdout)
    assert env["PATH"] == "/usr/bin:/bin"
    assert env["HOME"] == "/workspace"
    assert env["LANG"] == "C.UTF-8"


@pytest.fixture
def listener() -> Iterator[int]:
    """A TCP port on the host's loopback that accepts connections."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


def test_no_network(ws: Workspace, listener: int) -> None:
    socket.create_connection(("127.0.0.1", listener), timeout=2).close()  # open from here
    code = """
import socket, sys
for port in sys.argv[1:]:
    try:
        socket.create_connection(("127.0.0.1", int(port)), timeout=2)
        print(port, "connected")
    except OSError as exc:
        print(port, type(exc).__name__)
"""
    result = ws.run(["python3", "-c", code, str(listener), "5432"], timeout_s=10)
    assert result.stdout.split("\n")[:2] == [
        f"{listener} OSError",
        "5432 OSError",
    ], result


def test_system_is_read_only_and_privileges_are_dropped(ws: Workspace) -> None:
    script = """
touch /usr/x 2>/dev/null && echo usr-writable
touch /x 2>/dev/null && echo root-writable
mount -o remount,rw /usr 2>/dev/null && echo remounted
python3 -c 'import os; os.chroot("/tmp")' 2>/dev/null && echo chrooted
touch /tmp/x && echo tmp-ok
grep CapEff /proc/self/status
"""
    result = ws.run(["sh", "-c", script], timeout_s=10)
    assert result.stdout == "tmp-ok\nCapEff:\t0000000000000000\n", result


def test_writes_in_the_workspace_are_visible_outside(ws: Workspace) -> None:
    result = ws.run(
        ["sh", "-c", "mkdir -p 'sub dir' && cat > 'sub dir/out.txt' && echo done"],
        timeout_s=10,
        stdin="from stdin é",
    )
    assert (result.exit_code, result.stdout) == (0, "done\n")
    assert (ws.root / "sub dir" / "out.txt").read_text(encoding="utf-8") == "from stdin é"


# ---------------------------------------------------------------- limits and timeouts


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_BATCH is Linux's")
def test_commands_run_under_the_default_scheduling_policy(ws: Workspace) -> None:
    # An agent's worker thread runs under SCHED_BATCH (runtime._batch_scheduling); the
    # commands its tools start must not inherit it.
    import threading

    from agentledger.actors.runtime import _batch_scheduling

    seen: list[object] = []

    def worker() -> None:
        seen.append(_batch_scheduling())
        result = python(ws, "import os; print(os.sched_getscheduler(0))")
        seen.append(result.stdout.strip())
        seen.append(os.sched_getscheduler(0))  # the thread's own policy is kept

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert seen == ["batch", str(os.SCHED_OTHER), os.SCHED_BATCH]


def test_timeout_kills_the_whole_group(ws: Workspace) -> None:
    started = time.monotonic()
    with pytest.raises(ToolTimeout) as caught:
        ws.run(["sh", "-c", "(sleep 1.5; touch late) & echo started; sleep 30"], timeout_s=1)
    elapsed = time.monotonic() - started
    assert elapsed < 2.5
    message = str(caught.value)
    assert "sleep 30" in message and "within 1 s" in message and "larger timeout_s" in message
    assert caught.value.result is not None and caught.value.result.timed_out
    assert caught.value.result.stdout == "started\n"
    time.sleep(2.5 - elapsed)  # the background job would have finished by now...
    assert not (ws.root / "late").exists()  # ...had it not been killed with the rest


def test_background_jobs_do_not_outlive_the_command(ws: Workspace) -> None:
    started = time.monotonic()
    result = ws.run(["sh", "-c", "sleep 30 & echo bg"], timeout_s=10)
    assert result.stdout == "bg\n"
    assert time.monotonic() - started < 3


def test_memory_hog_is_stopped(ws: Workspace) -> None:
    result = python(ws, "b = bytearray(512 * 1024 * 1024)", limits=Limits(memory_bytes=256 << 20))
    assert result.exit_code == 1
    assert "MemoryError" in result.stderr
    default = python(ws, "b = bytearray(2 * 1024 ** 3)")  # over the default 1 GiB
    assert "MemoryError" in default.stderr


def test_cpu_limit(ws: Workspace) -> None:
    result = ws.run(
        ["python3", "-c", "while True: pass"], timeout_s=10, limits=Limits(cpu_seconds=1)
    )
    assert result.exit_code == 128 + 24  # SIGXCPU
    assert "CPU time limit is 1 s" in result.stderr
    assert not result.timed_out


def test_file_size_limit(ws: Workspace) -> None:
    code = "open('big', 'wb').write(b'x' * (2 << 20))"
    result = python(ws, code, limits=Limits(file_size_bytes=1 << 20))
    assert result.exit_code == 1
    assert "File too large" in result.stderr


def test_open_files_limit(ws: Workspace) -> None:
    code = "fs = [open('/dev/null') for _ in range(100)]"
    assert python(ws, code, limits=Limits(open_files=50)).exit_code == 1
    assert python(ws, code).exit_code == 0


def _kernel() -> tuple[int, int]:
    major, minor = platform.release().split(".")[:2]
    return int(major), int("".join(c for c in minor if c.isdigit()) or 0)


@pytest.mark.skipif(
    _kernel() < (6, 14), reason="pid_max per PID namespace needs Linux 6.14+ (older: a warning)"
)
def test_process_limit_stops_a_fork_bomb(ws: Workspace) -> None:
    # Bounded here (600 forks at most); unbounded, the machine's process table fills.
    code = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    for _ in range(600):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(2)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "except OSError as exc:\n"
        "    print('refused', exc.errno)\n"
        "print(n)\n"
    )
    result = python(ws, code, limits=Limits(processes=320))
    refused, started = result.stdout.split()[1:]
    assert refused == "11"  # EAGAIN
    assert 200 < int(started) < 320
    assert python(ws, "print(open('/proc/sys/kernel/pid_max').read())").stdout.strip() == "1024"
    with pytest.raises(ToolError, match="at least 301"):
        Limits(processes=300)  # the kernel would refuse it, leaving no limit


def test_run_rejects_bad_commands(ws: Workspace) -> None:
    with pytest.raises(ToolError, match="need a non-empty list"):
        ws.run([], timeout_s=1)
    with pytest.raises(ToolError, match="timeout_s must be positive"):
        ws.run(["true"], timeout_s=0)
    missing = ws.run(["no-such-program"], timeout_s=5)
    assert missing.exit_code != 0 and "no-such-program" in missing.stderr
    plain = Workspace(ws.root, isolation=False).run(["no-such-program"], timeout_s=5)
    assert plain.exit_code != 0 and "no-such-program" in plain.stderr


# ---------------------------------------------------------------- tools in the sandbox


def test_run_python_tool_is_isolated(ws: Workspace) -> None:
    registry = default_registry()
    ctx = ToolContext(ws, None, "k")
    code = f"print(open({str(REPO_FILE)!r}).read())"
    result = registry.execute("run_python", {"code": code}, ctx)
    assert isinstance(result, dict)
    assert result["exit_code"] == 1
    assert "FileNotFoundError" in str(result["stderr"])
    with pytest.raises(ToolTimeout, match=r"run_python: .*within 0\.5 s.*up to 600"):
        registry.execute(
            "run_python", {"code": "import time; time.sleep(30)", "timeout_s": 0.5}, ctx
        )


def test_unisolated_fallback_says_so(tmp_path: Path) -> None:
    plain = Workspace(tmp_path / "plain", isolation=False)
    assert not plain.isolated
    result = plain.run(["sh", "-c", "pwd; echo $HOME"], timeout_s=5)
    assert result.stdout == f"{plain.root}\n{plain.root}\n"
    with pytest.raises(ToolTimeout):
        plain.run(["sleep", "30"], timeout_s=0.3)
    assert os.path.isdir(plain.root)


def test_refused_namespaces_fall_back_loudly(tmp_path: Path) -> None:
    # A user namespace whose limit of nested namespaces is 0 refuses unshare, as a locked-down
    # kernel would; the probe must notice, warn, and report isolated=False.
    code = f"""
import logging
logging.basicConfig(format="%(levelname)s %(message)s")
from pathlib import Path
from agentledger.actors.sandbox import ToolError, Workspace
ws = Workspace(Path({str(tmp_path / "ws")!r}))
print(ws.isolated, ws.run(["pwd"], timeout_s=5).stdout.strip())
try:
    Workspace(Path({str(tmp_path / "ws")!r}), isolation=True)
except ToolError as exc:
    print("required:", exc)
"""
    script = 'echo 0 > /proc/sys/user/max_user_namespaces && exec "$0" -c "$1"'
    done = subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c", script, sys.executable, code],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = done.stdout.splitlines()
    assert lines[0] == f"False {tmp_path / 'ws'}"
    assert lines[1].startswith("required: workspace ") and "isolation was required" in lines[1]
    assert "WARNING sandbox isolation unavailable" in done.stderr
    assert "commands run UNISOLATED" in done.stderr

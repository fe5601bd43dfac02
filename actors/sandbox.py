"""A per-run workspace: paths confined to one directory, commands run in an isolated sandbox.

Commands run inside Linux user, mount, network, PID, IPC and UTS namespaces (``unshare``), in a
fresh root that holds only read-only system directories (``/usr`` and the ``/bin``, ``/lib``
links), a few ``/etc`` files, private ``/tmp`` and ``/dev/shm``, five ``/dev`` nodes, its own
``/proc`` and the workspace, read-write, at ``/workspace``. The old root is unmounted after
``pivot_root``, every capability is dropped and ``no_new_privs`` is set, so the command cannot
read the user's files, reach the network, or remount its way out. Where namespaces are refused,
commands run as plain subprocesses with the same limits, ``Workspace.isolated`` is False and a
warning is logged: isolation is never claimed when it is not there. Without it a command starts
in the workspace with a scrubbed environment but can read whatever the agent's user can (the
agent's own environment in ``/proc``, the user's files) and a process it detaches (``setsid``)
can outlive the timeout.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import resource
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import IO

from agentledger.events import AgentLedgerError

__all__ = [
    "CommandResult",
    "Limits",
    "SandboxViolation",
    "ToolError",
    "ToolTimeout",
    "Workspace",
]

_log = logging.getLogger(__name__)

# Where the workspace appears inside the isolated root.
SANDBOX_WORKSPACE = PurePosixPath("/workspace")
# Each of stdout and stderr keeps this many bytes from its start and as many from its end, so a
# chatty command cannot fill memory and a traceback at the end of the output is still seen.
_KEEP_HEAD_BYTES = 10_000
_KEEP_TAIL_BYTES = 10_000
# After the main process exits, its leftovers get this long to close the pipes before the whole
# process group is killed (background jobs do not outlive the tool call).
_EXIT_GRACE_S = 0.5
# The CPU soft limit sends SIGXCPU (a clear "CPU time limit" death); the hard limit, this much
# later, sends SIGKILL to a process that ignores SIGXCPU.
_CPU_KILL_AFTER_S = 1
_SETUP_FAILED = 125  # exit status of the namespace script when it could not build the root
_SETUP_MARKER = "agentledger-sandbox:"
_PROBE_TIMEOUT_S = 15.0
_MIN_PID_MAX = 301  # RESERVED_PIDS + 1
# The probe's command: prints the process limit it runs under (nothing without a /proc).
_PROBE_ARGV = ["sh", "-c", "cat /proc/sys/kernel/pid_max 2>/dev/null; true"]


class ToolError(AgentLedgerError):
    """A tool could not do what it was asked; the message says why and what to change."""


class SandboxViolation(ToolError):
    """A path or command tried to reach outside the workspace."""


class ToolTimeout(ToolError):
    """A command ran past its timeout; its whole process group was killed."""

    def __init__(self, message: str, result: CommandResult | None = None) -> None:
        super().__init__(message)
        self.result = result  # output captured before the kill, with timed_out=True


@dataclass(frozen=True)
class Limits:
    """Resource limits applied to every process a command starts (``setrlimit``)."""

    cpu_seconds: int = 30
    memory_bytes: int = 1 << 30  # address space, so a runaway allocation fails early
    file_size_bytes: int = 64 << 20
    open_files: int = 256
    # Processes and threads at once (the PID namespace's pid_max, at least 301): a fork bomb
    # fails with EAGAIN instead of filling the machine's process table. Not an rlimit, because
    # RLIMIT_NPROC counts all of the user's processes and binds no one when the user is root.
    processes: int = 1024

    def __post_init__(self) -> None:
        if self.processes < _MIN_PID_MAX:  # the kernel refuses a lower pid_max
            raise ToolError(
                f"Limits.processes must be at least {_MIN_PID_MAX}, not {self.processes}"
            )

    def rlimits(self) -> list[tuple[int, int, int]]:
        """The (resource, soft, hard) triples."""
        return [
            (resource.RLIMIT_CPU, self.cpu_seconds, self.cpu_seconds + _CPU_KILL_AFTER_S),
            (resource.RLIMIT_AS, self.memory_bytes, self.memory_bytes),
            (resource.RLIMIT_FSIZE, self.file_size_bytes, self.file_size_bytes),
            (resource.RLIMIT_NOFILE, self.open_files, self.open_files),
        ]

    def prlimit_args(self) -> list[str]:
        """The same limits as ``prlimit`` options."""
        names = {
            resource.RLIMIT_CPU: "cpu",
            resource.RLIMIT_AS: "as",
            resource.RLIMIT_FSIZE: "fsize",
            resource.RLIMIT_NOFILE: "nofile",
        }
        return [f"--{names[which]}={soft}:{hard}" for which, soft, hard in self.rlimits()]


@dataclass(frozen=True)
class CommandResult:
    """What a finished command produced; a non-zero exit is a result, not an error.

    A process killed by signal N reports ``exit_code`` 128 + N, as a shell does.
    """

    exit_code: int
    stdout: str
    stderr: str
    duration_ms: int
    timed_out: bool = False


# The namespace script. It runs as PID 1 of the new PID namespace and stays there as a tiny
# supervisor: util-linux 2.38's ``unshare --fork`` reports a child killed by a signal as exit 1,
# and a PID 1 ignores signals it has no handler for, so the command runs as its child instead.
# Arguments: workspace, mount point for the new root, 1/0 mount /proc, the PID namespace's
# pid_max (set where the kernel has one per namespace, Linux 6.14+), then the command.
_NAMESPACE_SCRIPT = r"""
set -eu
PATH=/usr/sbin:/usr/bin:/sbin:/bin
fail() { echo "agentledger-sandbox: $*" >&2; exit 125; }
ws=$1; new_root=$2; with_proc=$3; max_pids=$4; shift 4
mount -t tmpfs -o mode=0755,size=16m,nosuid,nodev agentledger-root "$new_root" \
  || fail "cannot mount a tmpfs at $new_root"
cd "$new_root"
mkdir workspace tmp dev dev/shm etc proc .old
bind_ro() {  # $1 host path, $2 path in the new root
  # --bind, not --rbind: a submount would keep its own (possibly writable) flags.
  mount --bind -o ro "$1" "$2" || fail "cannot bind $1 read-only"
}
copy_entry() {  # keep symlinks as symlinks (Debian: /bin -> usr/bin), bind the rest read-only
  if [ -L "/$1" ]; then ln -s "$(readlink "/$1")" "$1"
  elif [ -d "/$1" ]; then mkdir "$1"; bind_ro "/$1" "$1"
  elif [ -f "/$1" ]; then : > "$1"; bind_ro "/$1" "$1"
  fi
}
for d in usr bin sbin lib lib32 lib64 libx32; do copy_entry "$d"; done
# Only what the loader, the C library and Debian's alternatives need; no host accounts.
for f in ld.so.cache localtime alternatives; do
  copy_entry "etc/$f"
done
printf 'root:x:0:0:root:/workspace:/bin/sh\n' > etc/passwd
printf 'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n' >> etc/passwd
printf 'root:x:0:\nnogroup:x:65534:\n' > etc/group
printf '127.0.0.1 localhost\n::1 localhost\n' > etc/hosts
for n in null zero full random urandom; do
  : > "dev/$n"; mount --bind "/dev/$n" "dev/$n" || fail "cannot bind /dev/$n"
done
ln -s /proc/self/fd dev/fd; ln -s /proc/self/fd/0 dev/stdin
ln -s /proc/self/fd/1 dev/stdout; ln -s /proc/self/fd/2 dev/stderr
mount -t tmpfs -o mode=1777,size=256m,nosuid,nodev tmpfs tmp || fail "cannot mount /tmp"
mount -t tmpfs -o mode=1777,size=64m,nosuid,nodev tmpfs dev/shm || fail "cannot mount /dev/shm"
mount --bind "$ws" workspace || fail "cannot bind the workspace $ws"
if [ "$with_proc" = 1 ]; then
  mount -t proc -o nosuid,nodev,noexec proc proc || fail "cannot mount /proc"
  echo "$max_pids" 2>/dev/null > proc/sys/kernel/pid_max || :  # checked once by the probe
fi
pivot_root . .old || fail "pivot_root failed"
cd /
# Detach the host's tree: after this nothing outside the new root is reachable by any path.
umount -l /.old || fail "cannot detach the old root"
rmdir /.old
mount -o remount,bind,ro / || fail "cannot make the new root read-only"
cd /workspace
PATH=/usr/bin:/bin
set +e
# No capabilities and no_new_privs: root in this namespace can no longer mount, remount /usr
# read-write, or chroot out.
setpriv --no-new-privs --bounding-set=-all --inh-caps=-all -- "$@"
exit $?
"""

_UNSHARE_BASE = ["--user", "--map-root-user", "--mount", "--net", "--ipc", "--uts"]
_UNSHARE_PID = ["--pid", "--fork", "--kill-child"]
# Directories the new root's tmpfs may be mounted on (only inside the private mount namespace).
_ROOT_MOUNT_CANDIDATES = ("/tmp", "/var/tmp", "/srv", "/media", "/opt", "/home", "/mnt")


@dataclass(frozen=True)
class _Isolation:
    """How this machine isolates commands, found once per process by a probe."""

    unshare: str
    prlimit: str
    with_pid_namespace: bool


@functools.cache
def _probe_isolation() -> _Isolation | None:
    """Try a trivial isolated command once; None when namespaces are unavailable here."""
    if not sys.platform.startswith("linux"):
        _log.warning("no sandbox isolation on %s: commands run unisolated", sys.platform)
        return None

    def find(name: str) -> str | None:
        return shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")

    needed = ("unshare", "prlimit", "setpriv", "pivot_root", "mount", "umount")
    missing = [name for name in needed if find(name) is None]
    unshare, prlimit = find("unshare"), find("prlimit")
    if missing or unshare is None or prlimit is None:
        _log.warning(
            "sandbox isolation unavailable (missing %s): commands run UNISOLATED, with resource "
            "limits only; install util-linux to isolate them",
            ", ".join(missing),
        )
        return None
    errors: list[str] = []
    with tempfile.TemporaryDirectory(prefix="agentledger-probe-") as probe_dir:
        for with_pid in (True, False):
            candidate = _Isolation(unshare, prlimit, with_pid)
            argv = _isolated_argv(candidate, Path(probe_dir).resolve(), Limits(), _PROBE_ARGV)
            try:
                done = subprocess.run(
                    argv,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=_PROBE_TIMEOUT_S,
                    env=_scrubbed_env(SANDBOX_WORKSPACE),
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                errors.append(str(exc))
                continue
            if done.returncode == 0:
                if not with_pid:
                    _log.warning("sandbox without a PID namespace: %s", "; ".join(errors))
                if done.stdout.strip() != str(Limits().processes):
                    _log.warning(
                        "no process limit in the sandbox (this kernel has no pid_max per PID "
                        "namespace; Linux 6.14 has): a command can start processes until the "
                        "machine has no more"
                    )
                return candidate
            errors.append(f"exit {done.returncode}: {done.stderr.strip()[:300]}")
    _log.warning(
        "sandbox isolation unavailable (unshare refused: %s): commands run UNISOLATED, with "
        "resource limits only; enable unprivileged user namespaces "
        "(sysctl kernel.unprivileged_userns_clone=1) to isolate them",
        "; ".join(errors),
    )
    return None


def _root_mount_point(workspace: Path) -> str:
    """A directory to hide under the new root's tmpfs that does not contain the workspace."""
    for candidate in _ROOT_MOUNT_CANDIDATES:
        path = Path(candidate)
        if path.is_symlink() or not path.is_dir():
            continue
        if workspace == path or path in workspace.parents:
            continue
        return candidate
    raise ToolError(
        f"cannot isolate workspace {workspace}: it lies under every directory the sandbox can "
        f"use as a mount point ({', '.join(_ROOT_MOUNT_CANDIDATES)}); move it elsewhere"
    )


def _isolated_argv(
    isolation: _Isolation, workspace: Path, limits: Limits, argv: Sequence[str]
) -> list[str]:
    """The full command line that runs argv inside the namespaces, under limits."""
    flags = _UNSHARE_BASE + (_UNSHARE_PID if isolation.with_pid_namespace else [])
    return [
        isolation.prlimit,
        *limits.prlimit_args(),
        "--",
        isolation.unshare,
        *flags,
        "/bin/sh",
        "-c",
        _NAMESPACE_SCRIPT,
        "agentledger-sandbox",
        str(workspace),
        _root_mount_point(workspace),
        "1" if isolation.with_pid_namespace else "0",
        str(limits.processes),
        *argv,
    ]


def _scrubbed_env(
    home: PurePosixPath | Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """A minimal environment: nothing inherited, so no secret leaks into a command."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    if extra:
        env.update(extra)
    return env


def _limits_preexec(limits: Limits) -> Callable[[], None]:
    """A preexec_fn setting the limits; used only when ``prlimit`` is missing."""
    pairs = limits.rlimits()

    def apply() -> None:
        for which, soft, hard in pairs:
            resource.setrlimit(which, (soft, hard))

    return apply


class _BoundedCapture:
    """Keeps the start and the end of a stream, counting what was dropped between them."""

    def __init__(self) -> None:
        self._head = bytearray()
        self._tail = bytearray()
        self._total = 0

    def feed(self, chunk: bytes) -> None:
        """Add bytes read from the stream."""
        self._total += len(chunk)
        room = _KEEP_HEAD_BYTES - len(self._head)
        if room > 0:
            self._head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self._tail += chunk
            if len(self._tail) > _KEEP_TAIL_BYTES:
                del self._tail[: len(self._tail) - _KEEP_TAIL_BYTES]

    def text(self) -> str:
        """The captured text, with a note where bytes were dropped."""
        omitted = self._total - len(self._head) - len(self._tail)
        if omitted == 0:
            return bytes(self._head + self._tail).decode("utf-8", "replace")
        return (
            self._head.decode("utf-8", "replace")
            + f"\n[... {omitted} bytes omitted: output was {self._total} bytes, only the first "
            f"{_KEEP_HEAD_BYTES} and last {_KEEP_TAIL_BYTES} are kept ...]\n"
            + self._tail.decode("utf-8", "replace")
        )


@contextlib.contextmanager
def _default_scheduling() -> Iterator[None]:
    """The calling thread under the default scheduling policy while it starts a command: an
    agent's worker thread runs under SCHED_BATCH (runtime.py), which a child would inherit
    through fork and exec; a tool's command runs as any other program would."""
    try:
        policy = os.sched_getscheduler(0)
    except (AttributeError, OSError):  # not Linux
        yield
        return
    if policy == os.SCHED_OTHER:
        yield
        return
    os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.sched_setscheduler(0, policy, os.sched_param(0))


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the command's whole process group (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _signal_note(exit_code: int, limits: Limits) -> str:
    """Explain exit statuses that usually mean a resource limit was hit."""
    hints = {
        signal.SIGXCPU: f"the CPU time limit is {limits.cpu_seconds} s",
        signal.SIGKILL: "killed, perhaps at the hard CPU time limit",
        signal.SIGXFSZ: f"the file size limit is {limits.file_size_bytes} bytes",
        signal.SIGSEGV: f"the address space limit is {limits.memory_bytes} bytes",
    }
    for sig, hint in hints.items():
        if exit_code == 128 + sig:
            return f"\n[agentledger: exit status {exit_code} = 128 + {sig.name}; {hint}]"
    return ""


class Workspace:
    """One run's working directory: every path stays inside it, every command is sandboxed."""

    def __init__(self, root: Path, *, isolation: bool | None = None) -> None:
        """Create root if missing; isolation None = isolate when possible, True = require it."""
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve(strict=True)
        if not self.root.is_dir():
            raise ToolError(f"workspace {self.root} is not a directory")
        probed = _probe_isolation() if isolation is not False else None
        if isolation is True and probed is None:
            raise ToolError(
                f"workspace {self.root}: isolation was required but this machine refuses user "
                "namespaces (see the warning logged above); run where `unshare -r -n true` works"
            )
        self._isolation = probed
        self._prlimit = probed.prlimit if probed else shutil.which("prlimit", path="/usr/bin:/bin")

    @property
    def isolated(self) -> bool:
        """True when commands run in namespaces without access outside the workspace."""
        return self._isolation is not None

    @property
    def command_root(self) -> PurePosixPath:
        """The workspace as a command sees it: /workspace when isolated, else its real path."""
        return SANDBOX_WORKSPACE if self.isolated else PurePosixPath(self.root)

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r}, isolated={self.isolated})"

    def resolve(self, relative: str) -> Path:
        """The real path of ``relative`` inside the workspace, or SandboxViolation."""
        if not isinstance(relative, str) or relative.strip() == "":
            raise SandboxViolation(
                "empty path: give a path relative to the workspace, e.g. 'a.txt'"
            )
        if "\x00" in relative:
            raise SandboxViolation(f"path {relative!r} contains a NUL byte")
        if os.path.isabs(relative):
            raise SandboxViolation(
                f"path {relative!r} is absolute; give a path relative to the workspace root"
            )
        if relative.startswith("~"):
            # Not expanded by the file system, but surely meant as a home directory.
            raise SandboxViolation(
                f"path {relative!r} names a home directory; give a path relative to the "
                "workspace root"
            )
        # realpath follows each symlink in turn, so "link/.." means the link target's parent,
        # exactly as the kernel would see it when the file is opened.
        resolved = Path(os.path.realpath(self.root / relative))
        if resolved != self.root and self.root not in resolved.parents:
            via = " (through a symlink)" if ".." not in Path(relative).parts else ""
            raise SandboxViolation(
                f"path {relative!r} leads outside the workspace{via}, to {resolved}; "
                "only paths inside the workspace are allowed"
            )
        return resolved

    def run(
        self,
        argv: Sequence[str],
        *,
        timeout_s: float,
        stdin: str | None = None,
        limits: Limits = Limits(),  # frozen, so one shared default is safe
        extra_env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """Run argv in the sandbox with cwd at the workspace; ToolTimeout after timeout_s."""
        argv = list(argv)
        if not argv or any(not isinstance(a, str) or "\x00" in a for a in argv):
            raise ToolError(f"invalid command {argv!r}: need a non-empty list of NUL-free strings")
        if not timeout_s > 0:
            raise ToolError(f"timeout_s must be positive, got {timeout_s}")
        env = _scrubbed_env(self.command_root, extra_env)
        preexec: Callable[[], None] | None = None
        if self._isolation is not None:
            full_argv = _isolated_argv(self._isolation, self.root, limits, argv)
        elif self._prlimit is not None:
            full_argv = [self._prlimit, *limits.prlimit_args(), "--", *argv]
        else:
            # preexec_fn is unsafe with threads; prlimit avoids it wherever util-linux exists.
            full_argv, preexec = argv, _limits_preexec(limits)
        _log.debug("run (isolated=%s) %s", self.isolated, shlex.join(argv))
        with tempfile.TemporaryFile() as stdin_file:
            # A file, not a pipe, so a command that never reads stdin cannot block us.
            if stdin is not None:
                stdin_file.write(stdin.encode("utf-8"))
                stdin_file.seek(0)
            result = self._run_process(
                full_argv, env, stdin_file if stdin is not None else None, timeout_s, preexec
            )
        if result.timed_out:
            raise ToolTimeout(
                f"command {shlex.join(argv)!r} did not finish within {timeout_s:g} s and was "
                "killed with its whole process group; pass a larger timeout_s if it needs "
                "more time, or make it do less",
                result,
            )
        if (
            self._isolation is not None
            and result.exit_code == _SETUP_FAILED
            and (_SETUP_MARKER in result.stderr)
        ):
            raise ToolError(
                f"the sandbox for workspace {self.root} could not be built: "
                f"{result.stderr.strip()[:500]}"
            )
        note = _signal_note(result.exit_code, limits)
        return replace(result, stderr=result.stderr + note) if note else result

    def _run_process(
        self,
        argv: list[str],
        env: dict[str, str],
        stdin: IO[bytes] | None,
        timeout_s: float,
        preexec: Callable[[], None] | None,
    ) -> CommandResult:
        """Start the process, capture bounded output, enforce the wall-clock timeout."""
        started = time.monotonic()
        deadline = started + timeout_s
        try:
            with _default_scheduling():
                proc = subprocess.Popen(
                    argv,
                    cwd=self.root,
                    env=env,
                    stdin=stdin if stdin is not None else subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,  # own session and group: a timeout kills them all
                    close_fds=True,
                    preexec_fn=preexec,  # only without prlimit, see run()
                )
        except FileNotFoundError as exc:
            if not self.root.is_dir():
                raise ToolError(f"workspace {self.root} no longer exists") from exc
            # The same answer a shell (and the isolated path) gives: a result, not an exception.
            return CommandResult(
                exit_code=127,
                stdout="",
                stderr=f"{argv[0]}: command not found\n",
                duration_ms=round((time.monotonic() - started) * 1000),
            )
        assert proc.stdout is not None and proc.stderr is not None
        out, err = _BoundedCapture(), _BoundedCapture()
        captures = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
        timed_out = False
        exited_at: float | None = None
        with selectors.DefaultSelector() as selector:
            for stream in (proc.stdout, proc.stderr):
                selector.register(stream, selectors.EVENT_READ)
            while selector.get_map():
                now = time.monotonic()
                if exited_at is None and proc.poll() is not None:
                    exited_at = now
                if exited_at is not None and now - exited_at > _EXIT_GRACE_S:
                    _kill_group(proc)  # leftovers hold the pipes open; they die with the call
                    break
                if now >= deadline:
                    timed_out = proc.poll() is None
                    break
                wait = min(deadline - now, 0.1 if exited_at is None else _EXIT_GRACE_S)
                for key, _ in selector.select(wait):
                    chunk = os.read(key.fd, 65536)
                    if chunk:
                        captures[key.fd].feed(chunk)
                    else:
                        selector.unregister(key.fileobj)
        if not timed_out:
            try:
                proc.wait(max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                timed_out = True
        # On timeout this kills the whole group; otherwise it ends leftovers that closed their
        # pipes (the group id stays reserved while any member lives, so it cannot hit strangers).
        _kill_group(proc)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        code = proc.returncode
        return CommandResult(
            exit_code=128 - code if code < 0 else code,  # shell convention for signals
            stdout=out.text(),
            stderr=err.text(),
            duration_ms=round((time.monotonic() - started) * 1000),
            timed_out=timed_out,
        )

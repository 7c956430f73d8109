"""Child processes of a benchmark run: start, watch, sample memory, and always kill.

Every child runs in its own session (process group), so one ``killpg`` reaches gunicorn's or
Celery's own children too, and a Ctrl-C in the terminal reaches only the harness, which then
tears everything down in order instead of leaving half the stack running.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parents[1]
# The last line of a Python traceback: "package.module.SomeError: message".
_EXCEPTION = re.compile(r"^(?:[\w.]+\.)?\w+(?:Error|Exception): .*$", re.MULTILINE)


class PhaseError(RuntimeError):
    """A phase cannot go on (a child died, a server never came up); the message says why."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes]
    log_path: Path
    env_extra: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None


class Supervisor:
    """Owns every child of the run; ``stop_all`` is safe to call at any time, and twice."""

    def __init__(self, logdir: Path, env: dict[str, str]) -> None:
        self.logdir = logdir
        self.env = env
        self.children: dict[str, Child] = {}
        self._runs = 0

    def start(self, name: str, argv: list[str], extra: dict[str, str] | None = None) -> Child:
        if name in self.children and self.children[name].alive():
            raise PhaseError(f"{name} is already running")
        self._runs += 1
        extra = dict(extra or {})
        # gunicorn >= 25.1 opens a control socket under $XDG_RUNTIME_DIR (else ~/.gunicorn);
        # two servers sharing that path unlink each other's socket, and so would a developer's
        # own gunicorn. A private directory per child keeps the command line itself unchanged.
        runtime = self.logdir / f"run-{self._runs}-{name}"
        runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
        env = {**os.environ, **self.env, **extra, "XDG_RUNTIME_DIR": str(runtime)}
        env["PYTHONUNBUFFERED"] = "1"
        log_path = self.logdir / f"{name}.log"
        with log_path.open("ab") as log:
            log.write(f"\n===== start {time.strftime('%H:%M:%S')}: {' '.join(argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        child = Child(name, argv, proc, log_path, extra)
        self.children[name] = child
        return child

    def stop(self, name: str, grace: float = 10.0) -> None:
        child = self.children.pop(name, None)
        if child is None:
            return
        _kill_group(child.proc, grace)

    def kill(self, name: str) -> None:
        """SIGKILL to the child's whole process group (a Celery worker and its pool)."""
        child = self.children.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.proc.pid, signal.SIGKILL)
        child.proc.wait(timeout=30)

    def stop_all(self, grace: float = 10.0) -> None:
        # Stop in reverse start order: clients (worker, scheduler) before the servers they call.
        for name in reversed(list(self.children)):
            with contextlib.suppress(Exception):
                self.stop(name, grace)

    def check_alive(self, names: list[str] | None = None) -> None:
        for name in names or list(self.children):
            child = self.children.get(name)
            if child is not None and not child.alive():
                raise PhaseError(
                    f"{name} exited with code {child.proc.returncode}\n{self.tail(name)}"
                )

    def tail(self, name: str, chars: int = 4000) -> str:
        path = self.logdir / f"{name}.log"
        if not path.exists():
            return f"(no log for {name})"
        text = path.read_text(errors="replace")[-chars:]
        return f"----- {name}.log (tail) -----\n{text}\n----- end {name}.log -----"

    def log_errors(self, name: str, top: int = 5) -> dict[str, Any]:
        """ERROR lines and exception messages in ``name``'s log since its last start."""
        path = self.logdir / f"{name}.log"
        if not path.exists():
            return {"error_lines": 0, "exceptions": {}}
        text = path.read_text(errors="replace").rsplit("===== start", 1)[-1]
        errors = sum(1 for line in text.splitlines() if " ERROR" in line or "ERROR/" in line)
        found: Counter[str] = Counter(m.group(0)[:200] for m in _EXCEPTION.finditer(text))
        return {"error_lines": errors, "exceptions": dict(found.most_common(top))}

    def tails(self, chars: int = 3000) -> str:
        names = sorted(p.stem for p in self.logdir.glob("*.log"))
        return "\n".join(self.tail(name, chars) for name in names)


def _kill_group(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM the child's process group, then SIGKILL whatever is left after ``grace``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
    # The leader may be gone while its children linger (a Celery pool process, a gunicorn
    # worker): the group outlives its leader, so SIGKILL the group regardless.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def wait_http(port: int, path: str, child: Child, timeout: float = 60.0, expect: int = 200) -> None:
    """Wait until ``GET path`` on 127.0.0.1:``port`` answers ``expect``, or fail loudly."""
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        if not child.alive():
            raise PhaseError(f"{child.name} exited with code {child.proc.returncode}")
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            if response.status == expect:
                return
            last = f"HTTP {response.status}"
        except OSError as exc:
            last = repr(exc)
        finally:
            conn.close()
        time.sleep(0.2)
    raise PhaseError(f"{child.name} did not answer {path} within {timeout:.0f}s ({last})")


# ------------------------------------------------------------------ memory


def proc_files(name: str) -> Iterator[tuple[int, bytes]]:
    """(pid, content of ``/proc/<pid>/<name>``) for every process whose file could be read
    (one that ended meanwhile, or is not ours to read, is passed over)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/{name}", "rb") as f:
                yield int(entry), f.read()
        except OSError:
            continue


def proc_table() -> dict[int, int]:
    """pid -> parent pid, from /proc."""
    table: dict[int, int] = {}
    for pid, raw in proc_files("stat"):
        # The command name is in parentheses and may itself hold spaces or ')'.
        fields = raw[raw.rfind(b")") + 2 :].split()
        if len(fields) > 1:
            table[pid] = int(fields[1])
    return table


def tree_pids(root: int, table: dict[int, int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, ppid in table.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid in table:
            out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def tree_of(root: int) -> Callable[[], list[int]]:
    """A ``CpuMeter`` group: ``root`` and every process under it, as they are when asked."""
    return lambda: tree_pids(root, proc_table())


def rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class Sampler:
    """Calls ``sample()`` every ``interval`` seconds from a thread of its own, for as long as
    the ``with`` block it opens lasts."""

    def __init__(self, name: str, interval: float) -> None:
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        raise NotImplementedError


class RssSampler(Sampler):
    """Samples, every ``interval`` seconds, the summed RSS of each named process and its tree."""

    def __init__(self, targets: dict[str, int], interval: float = 0.5) -> None:
        super().__init__("rss-sampler", interval)
        self.targets = targets
        self.peak_kib: dict[str, int] = dict.fromkeys(targets, 0)
        self.peak_procs: dict[str, int] = dict.fromkeys(targets, 0)
        self.samples = 0

    def sample(self) -> None:
        table = proc_table()
        for name, root in self.targets.items():
            pids = tree_pids(root, table)
            total = sum(rss_kib(pid) for pid in pids)
            if total > self.peak_kib[name]:
                self.peak_kib[name] = total
                self.peak_procs[name] = len(pids)
        self.samples += 1

    def peaks_mb(self) -> dict[str, float]:
        return {name: kib / 1024 for name, kib in self.peak_kib.items()}


# ------------------------------------------------------------------ CPU


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of ``pids`` (live processes only)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rfind(b")") + 2 :].split()
        # Fields 14 and 15 of stat (utime, stime) are 11 and 12 after the command name.
        total += int(fields[11]) + int(fields[12])
    return total / CLK_TCK


def machine_cpu() -> dict[str, float]:
    """Whole-machine CPU seconds since boot, summed over cores: busy (everything but idle and
    iowait), interrupts (irq + softirq: loopback networking lands here, not in any process)
    and steal (time the hypervisor gave to other guests)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]] + [0] * 10
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    # guest time is already included in user, so the first eight fields are the whole.
    return {
        "busy": (user + nice + system + irq + softirq + steal) / CLK_TCK,
        "interrupts": (irq + softirq) / CLK_TCK,
        "steal": steal / CLK_TCK,
        "idle": (idle + iowait) / CLK_TCK,
    }


def postgres_backends(database: str) -> list[int]:
    """Postgres backend processes serving ``database`` (their title names the database)."""
    needle = f" {database} ".encode()
    return [
        pid for pid, cmd in proc_files("cmdline") if cmd.startswith(b"postgres:") and needle in cmd
    ]


def pids_named(name: str) -> list[int]:
    """Processes whose command name (``/proc/<pid>/comm``) is ``name``, e.g. redis-server."""
    return [pid for pid, comm in proc_files("comm") if comm.strip() == name.encode()]


def own_pid() -> list[int]:
    return [os.getpid()]


class CpuMeter:
    """CPU seconds used over a window by groups of processes, and by the whole machine.

    A group is a function returning its pids, evaluated at both ends (a process seen only at
    the end counts from zero, one gone by the end is dropped: short-lived processes are missed,
    which the machine-wide figure still shows as "other").
    """

    def __init__(self, groups: dict[str, Callable[[], list[int]]]) -> None:
        self.groups = groups
        self._start: dict[str, dict[int, float]] = {}
        self._machine: dict[str, float] = {}
        self._began = 0.0

    @staticmethod
    def _per_pid(pids: list[int]) -> dict[int, float]:
        return {pid: cpu_seconds([pid]) for pid in pids}

    def start(self) -> None:
        self._start = {name: self._per_pid(get()) for name, get in self.groups.items()}
        self._machine = machine_cpu()
        self._began = time.monotonic()

    def stop(self) -> dict[str, float]:
        """CPU seconds per group, plus the machine's ``machine_busy``, ``interrupts`` and
        ``steal`` CPU seconds and the ``wall`` seconds of the window."""
        out: dict[str, float] = {}
        for name, get in self.groups.items():
            before = self._start.get(name, {})
            now = self._per_pid(get())
            out[name] = sum(v - before.get(pid, 0.0) for pid, v in now.items())
        machine = machine_cpu()
        out["machine_busy"] = machine["busy"] - self._machine["busy"]
        out["interrupts"] = machine["interrupts"] - self._machine["interrupts"]
        out["steal"] = machine["steal"] - self._machine["steal"]
        out["wall"] = time.monotonic() - self._began
        return out


def cpu_summary(used: dict[str, float]) -> dict[str, float]:
    """``CpuMeter.stop``'s figures plus ``other`` and ``machine_busy_pct``.

    ``other`` is the machine's busy time less every group, interrupts and hypervisor steal: what
    ran in processes not ours.
    """
    ours = sum(v for k, v in used.items() if k not in ("machine_busy", "wall"))
    out = dict(used)
    out["other"] = used["machine_busy"] - ours
    out["machine_busy_pct"] = (
        100 * used["machine_busy"] / max(used["wall"] * (os.cpu_count() or 1), 1e-9)
    )
    return out

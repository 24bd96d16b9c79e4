"""Starting, watching, measuring and stopping the servers under test."""
from __future__ import annotations

import mmap
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO / ".bench"
LOG_DIR = BENCH_DIR / "logs"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout):
            return True
    except OSError:
        return False


def _stat_fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/PID/stat after the command name (the first is the
    state), or None if pid is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm may contain spaces and parens: split after the last ')'
    return data[data.rindex(b")") + 2:].split()


def _read_stat(pid: int):
    """(ppid, session id) of pid, or None if it is gone."""
    rest = _stat_fields(pid)
    return None if rest is None else (int(rest[1]), int(rest[3]))


def process_tree(root: int) -> list[int]:
    """root, all its descendants, and every process in root's session
    (catches daemons that were re-parented away from the tree)."""
    info = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _read_stat(int(name))
            if st:
                info[int(name)] = st
    if root not in info:
        return []
    sid = info[root][1]
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in info.items():
        children.setdefault(ppid, []).append(pid)
    seen = set()
    todo = [root]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        todo.extend(children.get(p, ()))
    if sid == root:  # started with start_new_session: the session is ours alone
        seen.update(pid for pid, (_, s) in info.items() if s == sid)
    return sorted(seen)


def _cpu_s(pid: int) -> float:
    """CPU the kernel has charged to pid so far, in seconds: its threads'
    schedstat, exact once a task is not running (/proc/PID/stat's clock ticks
    are 10 ms apart, too coarse to sum over hundreds of children). A thread
    that already exited is not counted: see :func:`_process_cpu_s` for a
    process whose threads come and go."""
    return _schedstat_s(pid, 0)


def _schedstat_s(pid: int, field: int, name: str | None = None) -> float:
    """One field of schedstat (0: time on a CPU, 1: time runnable but waiting
    for one), summed over pid's live threads, in seconds: those named
    ``name`` only, or (None) all but Corral's core keepers, idle-priority
    threads that wait for a CPU by design."""
    total = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0.0
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
            if (comm == name) if name is not None else (comm != KEEPER_THREAD):
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    total += int(f.read().split()[field])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _process_cpu_s(pid: int) -> float:
    """CPU of the whole process pid, its exited threads included (utime +
    stime of /proc/PID/stat: the kernel's exact total, in 10 ms ticks). For
    the server, whose worker threads (Corral's trio threads, workerd's) come
    and go: summed per thread, one that exited mid-run took its CPU with it."""
    rest = _stat_fields(pid)
    return 0.0 if rest is None else (int(rest[11]) + int(rest[12])) / _CLK_TCK


def box_cpu_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of every CPU so far (/proc/stat): how
    saturated the machine was between two readings, whoever used it."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle and iowait
    return sum(ticks) - idle, sum(ticks)


def run_delay_s(pid: int) -> float:
    """Seconds pid's live threads have spent runnable but waiting for a CPU
    (second field of schedstat): what a process lost to others on a saturated
    machine, as opposed to what it used itself."""
    return _schedstat_s(pid, 1)


def _meminfo_kb() -> dict[str, int]:
    """/proc/meminfo's fields in kB, read once."""
    out: dict[str, int] = {}
    with open("/proc/meminfo") as f:
        for line in f:
            name, _, value = line.partition(":")
            fields = value.split()
            if fields and fields[0].isdigit():
                out[name] = int(fields[0])
    return out


def mem_available_kb() -> int:
    """The machine's MemAvailable (/proc/meminfo): its drop over a storm is
    all the memory the cold starts took, the kernel's (page tables, stacks,
    cgroups) as well as the processes' own, whichever system made them."""
    return _meminfo_kb().get("MemAvailable", 0)


def mem_in_use_kb() -> int:
    """The machine's memory not free (MemTotal - MemFree: page cache
    included), the guest memory a VM's host must back. Read before a storm,
    it says how close the storm starts to the point where the host's price
    for a new page jumps (see :func:`new_page_us`)."""
    info = _meminfo_kb()
    return info.get("MemTotal", 0) - info.get("MemFree", 0)


def new_page_us(mb: int = 16) -> float:
    """Microseconds to fault in one new 4 KiB page of anonymous memory now
    (the mean over ``mb`` MB, each page written once, then given back).

    Why: in a VM the host may back only so much guest memory cheaply. Here
    a new page cost ~3 us until the guest had ~2.4-4 GB in use
    (:func:`mem_in_use_kb`), and 15-40 us past that (measured with 256 and
    512 MB steps on 2026-12-03; where the step lies moved over the day, with
    the host's own load): a storm of cold starts that runs once earlier load
    has used that up pays 5-10x per page it takes, and its CPU per cold start
    rises with its memory per cold start. Read after a storm, this says which
    of the two prices it paid."""
    size = mb << 20
    area = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        started = time.perf_counter()
        for offset in range(0, size, 4096):
            area[offset] = 1
        return (time.perf_counter() - started) * 1e6 / (size >> 12)
    finally:
        area.close()


#: The roles of a server's processes, as :func:`cpu_by_pid` names them.
ROLES = ("server", "direct", "others", "keepers")


#: The thread name of Corral's core keepers (supervisor/core_keeper.py).
KEEPER_THREAD = "corral-keeper"


def cpu_by_pid(root: int, also: set[int] | frozenset[int] = frozenset()) -> dict[int, tuple[str, float]]:
    """CPU seconds so far of each process of ``root``'s tree or ``also``, with
    its role: ``root`` itself ("server"), its direct children ("direct":
    Corral's zygotes) or any other ("others": Corral's sandboxed children).
    The server's core keepers, idle-priority threads that spin only in time
    its cores would otherwise be idle, are "keepers" (key ``-root``), not
    "server"."""
    out = {}
    for pid in set(process_tree(root)) | set(also):
        st = _read_stat(pid)
        role = "server" if pid == root else "direct" if st and st[0] == root else "others"
        out[pid] = (role, _process_cpu_s(pid) if role == "server" else _cpu_s(pid))
    if root in out:
        keepers = _schedstat_s(root, 0, KEEPER_THREAD)
        out[root] = ("server", max(0.0, out[root][1] - keepers))
        out[-root] = ("keepers", keepers)
    return out


def role_delta(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds each role used between two :func:`cpu_by_pid` snapshots:
    for every process alive at the second, what it used since the first (all
    of it, if it started in between). One that exited in between is left out,
    its CPU of the interval lost with it; a difference of the two totals would
    instead subtract all it ever used (a zygote rotated out mid-storm made the
    zygotes' figure negative)."""
    out = dict.fromkeys(ROLES, 0.0)
    for pid, (role, seconds) in after.items():
        out[role] += seconds - before.get(pid, (role, 0.0))[1]
    return out


def kernel_threads_cpu_s() -> dict[str, float]:
    """CPU seconds so far of the host kernel's own threads (the children of
    kthreadd, pid 2), summed by name with any ``/N`` or ``.N`` suffix cut
    (``kworker/u8:0`` is ``kworker``, ``kdamond.0`` is ``kdamond``).

    Why a benchmark reads them: some of their work grows with the server's
    shape, not its requests. DAMON's physical-address monitoring (kdamond,
    on hosts that run it for proactive reclaim) samples pages and, for
    each, clears and tests the accessed bit in every mapping of that page:
    a page of a zygote shared by N children costs N page-table walks, where
    the same page of a one-process server costs one. That CPU is charged to
    no process of the server, so the server's own figures never show it."""
    out: dict[str, float] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        rest = _stat_fields(pid)
        if rest is None or (int(rest[1]) != 2 and pid != 2):
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        base = comm.split("/", 1)[0].split(".", 1)[0].split(":", 1)[0]
        out[base] = out.get(base, 0.0) + _cpu_s(pid)
    return out


def kernel_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds each kind of kernel thread used between two
    :func:`kernel_threads_cpu_s` readings, largest first (a thread that
    exited in between is left out)."""
    used = {k: v - before.get(k, 0.0) for k, v in after.items()}
    return dict(sorted(((k, v) for k, v in used.items() if v > 0), key=lambda kv: -kv[1]))


def pss_kb(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def pids_with_arg(text: str) -> set[int]:
    """Processes whose command line contains ``text`` (e.g. a server's state
    directory): they belong to it even once reparented to init."""
    found = set()
    needle = text.encode()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if needle in f.read():
                        found.add(int(entry))
            except OSError:
                pass
    return found


def tree_pss_mb(root: int, also: set[int] | frozenset[int] = frozenset()) -> tuple[float, int]:
    """Summed PSS in MB over root's process tree (and ``also``), and how many processes."""
    total = 0
    n = 0
    for pid in set(process_tree(root)) | set(also):
        kb = pss_kb(pid)
        if kb is not None:
            total += kb
            n += 1
    return total / 1024.0, n


class Server:
    """A child process in its own session; stop() ends it and its tree."""

    def __init__(self, name: str, argv: list[str], cwd: Path | None = None,
                 env: dict | None = None):
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.argv = argv
        self.log_path = LOG_DIR / f"{name}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            argv, cwd=str(cwd) if cwd else None, env=env,
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)
        _LIVE.add(self)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 8) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(line.strip() for line in lines[-n:])[-600:]

    def wait_port(self, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited with status {self.proc.returncode}: "
                                   f"{self.log_tail()}")
            if port_open(port):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not listen on 127.0.0.1:{port} within {timeout:.0f}s: "
                           f"{self.log_tail()}")

    def stop(self, grace: float = 5.0) -> None:
        if self not in _LIVE:
            return
        _LIVE.discard(self)
        tree = process_tree(self.pid) if self.alive() else []
        pgid = self.pid  # start_new_session: pgid == pid
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        # anything left, in the group or elsewhere in the tree we saw
        for sig_target in ([("pg", pgid)] + [("pid", p) for p in tree]):
            kind, ident = sig_target
            try:
                if kind == "pg":
                    os.killpg(ident, signal.SIGKILL)
                elif ident != os.getpid():
                    os.kill(ident, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        self._log.close()


_LIVE: set[Server] = set()


def stop_all() -> None:
    for s in list(_LIVE):
        try:
            s.stop()
        except Exception:  # noqa: BLE001 - best effort at exit
            pass

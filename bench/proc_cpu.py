"""CPU time per process tree, read from /proc/<pid>/stat, for a CPU-ms-per-task table.

The parsing and the arithmetic are plain functions over text and numbers (unit-tested); only
`read_stat`, `children` and `Meter` touch /proc. A process tree is counted pid by pid, so a
child that starts during the window (a gunicorn or prefork worker) counts from zero, and one
that exits before the end is lost: the benchmarks keep their processes up across the window.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


@dataclass(frozen=True)
class Stat:
    """The fields of one /proc/<pid>/stat line the table needs."""

    pid: int
    comm: str
    ppid: int
    ticks: int  # utime + stime, in clock ticks


def parse_stat(line: str) -> Stat:
    """Parse a /proc/<pid>/stat line; the command name may hold spaces and parentheses."""
    head, sep, tail = line.rpartition(")")
    pid, open_paren, comm = head.partition(" (")
    if not sep or not open_paren:
        raise ValueError(f"not a /proc/<pid>/stat line: {line[:80]!r}")
    fields = tail.split()
    # After the name: state ppid ... (field 14 utime, 15 stime counting from pid = 1).
    if len(fields) < 13:
        raise ValueError(f"/proc stat line has {len(fields)} fields after the name")
    return Stat(int(pid), comm, int(fields[1]), int(fields[11]) + int(fields[12]))


def owners(roots: Mapping[str, Iterable[int]], parents: Mapping[int, int]) -> dict[int, str]:
    """Return the group of every pid below a root: that of its nearest root ancestor, so a
    tree started inside another group's tree (the benchmark's own children) is not counted
    twice."""
    root_group = {pid: name for name, pids in roots.items() for pid in pids}
    out = {}
    for pid in parents:
        cursor, seen = pid, 0
        while cursor not in root_group and cursor in parents and seen < 4096:
            cursor, seen = parents[cursor], seen + 1
        if cursor in root_group:
            out[pid] = root_group[cursor]
    for pid, name in root_group.items():
        if pid in parents:
            out[pid] = name
    return out


def spent(before: Mapping[int, int], after: Mapping[int, int]) -> int:
    """Return the ticks a set of pids used between two readings (new pids count from 0)."""
    return sum(max(0, ticks - before.get(pid, 0)) for pid, ticks in after.items())


def ms_per_task(cpu_seconds: float, tasks: int) -> float:
    """Return CPU milliseconds per task for `cpu_seconds` spread over `tasks`."""
    return 1000.0 * cpu_seconds / tasks if tasks else 0.0


def format_table(rows: Mapping[str, float], tasks: int, seconds: float,
                 title: str) -> list[str]:
    """Return the lines of a CPU-ms-per-task table, largest first, with the total and the
    cores the processes kept busy on average (`rows` = CPU seconds per process group)."""
    total = sum(rows.values())
    lines = [f"  {title}: CPU ms per task over {tasks} tasks, {seconds:.1f} s window"]
    for name, cpu in sorted(rows.items(), key=lambda item: -item[1]):
        share = 100.0 * cpu / total if total else 0.0
        lines.append(f"    {name:<22} {ms_per_task(cpu, tasks):8.3f} ms  {share:5.1f} %")
    lines.append(f"    {'total':<22} {ms_per_task(total, tasks):8.3f} ms  "
                 f"({total / seconds if seconds else 0.0:.2f} cores busy)")
    return lines


def read_stat(pid: int) -> Stat | None:
    """Return the /proc reading of `pid`, or None if it is gone."""
    try:
        return parse_stat((PROC / str(pid) / "stat").read_text())
    except (OSError, ValueError):
        return None


def all_stats() -> dict[int, Stat]:
    """Return the reading of every process on the machine."""
    out = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            stat = read_stat(int(entry.name))
            if stat is not None:
                out[stat.pid] = stat
    return out


def pids_matching(comm: str, cmdline_part: str = "") -> list[int]:
    """Return the pids whose command name is `comm` and whose command line holds
    `cmdline_part` (e.g. beam.smp; redis-server with ":6379")."""
    found = []
    for stat in all_stats().values():
        if stat.comm == comm:
            with contextlib.suppress(OSError):
                cmdline = (PROC / str(stat.pid) / "cmdline").read_bytes().replace(b"\0", b" ")
                if cmdline_part.encode() in cmdline:
                    found.append(stat.pid)
    return found


def cmdline_of(pid: int) -> str:
    """Return the command line of `pid` ("" if it is gone)."""
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(
            errors="replace")
    except OSError:
        return ""


class Meter:
    """CPU of named process trees between `start()` and `stop()`.

    `groups` maps a name to root pids; each root's whole tree is counted (less the trees of
    other roots inside it), read again at `stop()` so that children started meanwhile are
    included. `split` moves the pids whose
    command line holds a marker into a group of their own (the collector below the
    dashboard's supervisor).
    """

    def __init__(self, groups: Mapping[str, Iterable[int]],
                 split: Mapping[str, str] | None = None) -> None:
        self.roots = {name: list(pids) for name, pids in groups.items()}
        self.split = dict(split or {})
        self.before: dict[str, dict[int, int]] = {}

    def _read(self) -> dict[str, dict[int, int]]:
        stats = all_stats()
        parents = {pid: stat.ppid for pid, stat in stats.items()}
        out: dict[str, dict[int, int]] = {name: {} for name in self.roots}
        for pid, name in sorted(owners(self.roots, parents).items()):
            target = next((group for group, marker in self.split.items()
                           if marker in cmdline_of(pid)), name)
            out.setdefault(target, {})[pid] = stats[pid].ticks
        return out

    def start(self) -> None:
        self.before = self._read()

    def stop(self) -> dict[str, float]:
        """Return the CPU seconds each group used since `start()`."""
        after = self._read()
        hz = os.sysconf("SC_CLK_TCK")
        return {name: spent(self.before.get(name, {}), pids) / hz
                for name, pids in after.items()}

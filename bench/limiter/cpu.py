"""CPU time used by each group of processes, and by the whole machine, from /proc."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def process_cpu(pids: list[int]) -> float:
    """Return the CPU seconds (user + system) the processes have used so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def machine_cpu() -> float:
    """Return the CPU seconds all cores have been busy since boot (any process)."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values) - idle) / os.sysconf("SC_CLK_TCK")


def pids_named(*names: str) -> list[int]:
    """Return the processes whose command name is one of `names` (e.g. redis-server)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "comm").read_text().strip() in names:
                    found.append(int(entry.name))
    return found


def groups(system_pids: dict[str, list[int]]) -> dict[str, list[int]]:
    """Return the system's process groups plus the broker, Redis and this benchmark."""
    return {**system_pids, "Redis": pids_named("redis-server"),
            "RabbitMQ": pids_named("beam.smp"), "this benchmark": [os.getpid()]}


def snapshot(by_group: dict[str, list[int]]) -> dict[str, float]:
    """Return the CPU seconds of each group so far, and of the machine as "machine"."""
    out = {name: process_cpu(pids) for name, pids in by_group.items()}
    out["machine"] = machine_cpu()
    return out


def cores_used(before: dict[str, float], after: dict[str, float],
               seconds: float) -> dict[str, float]:
    """Return the cores each group kept busy on average between two snapshots."""
    return {name: (after[name] - before[name]) / seconds for name in before}

"""How many CPU threads torch computes with (``cai --threads N``, ``$CAI_THREADS``).

Intra-op threads wait for each other at the end of every matmul. When another process holds one of the
cores, the thread scheduled there is late to every one of those barriers, and generation with 2 threads
on a 2-core machine ran several times slower than with 1 (figures in benchmarks/README.md). So the default,
``auto``, counts the cores this process may use and subtracts the cores other work keeps busy *now*
(CPU time sampled from ``/proc/stat`` over a few tens of milliseconds at start-up, rounded; the 1-minute load
average where there is no ``/proc/stat``): all cores on an idle machine, fewer on a busy one, never fewer
than 1 (an ``OMP_NUM_THREADS`` set in the environment is kept). An explicit number is used as given. The
load average is not used where a sample is possible: it remembers the minute before, so a command started
right after another (a script's next step, the pipeline's previous command) took 1 thread on an idle machine.
"""

from __future__ import annotations

import logging
import os
import sys

log = logging.getLogger(__name__)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def busy_cores(window: float = 0.03) -> float:
    """How many cores the whole machine keeps busy now: non-idle CPU time over ``window`` seconds from
    ``/proc/stat``; the 1-minute load average where that file does not exist."""
    import time

    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields) - idle, sum(fields)

    try:
        (b0, t0), _ = sample(), time.sleep(window)
        b1, t1 = sample()
        return (b1 - b0) / max(1, t1 - t0) * (os.cpu_count() or 1)
    except (OSError, ValueError, IndexError):
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return 0.0


def auto_threads(cores: int | None = None, load: float | None = None) -> int:
    """Cores minus the cores already busy (``busy_cores``, rounded), at least 1."""
    cores = cores or usable_cores()
    load = busy_cores() if load is None else load
    return max(1, min(cores, round(cores - load)))


def parse_threads(value: str | int | None) -> int:
    """A thread count from ``--threads`` / ``$CAI_THREADS``: a positive integer, or ``auto`` (the default)."""
    from cai.errors import ConfigError

    if value in (None, "", "auto"):
        given = os.environ.get("OMP_NUM_THREADS", "")
        return int(given) if given.isdigit() and int(given) > 0 else auto_threads()
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ConfigError(f"--threads must be a positive integer or auto, got {value!r}",
                          fix="e.g. --threads 1 on a machine other jobs keep busy")
    return n


def apply_threads(n: int) -> None:
    """Compute with ``n`` threads: set for torch if it is loaded, and through the OpenMP/MKL variables for
    when it loads (cai imports torch lazily, so a command sets this before torch starts its pool)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
    log.debug("computing with %d thread(s)", n)

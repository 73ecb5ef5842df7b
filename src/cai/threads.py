"""How many CPU threads torch computes with (``cai --threads N``, ``$CAI_THREADS``).

Intra-op threads wait for each other at the end of every matmul. When another process holds one of the
cores, the thread scheduled there is late to every one of those barriers, and generation with 2 threads
on a 2-core machine ran several times slower than with 1 (figures in the README). So the default,
``auto``, counts the cores this process may use and subtracts the load the system already carries (the
1-minute load average, as a whole number of busy cores): all cores on an idle machine, fewer on a busy
one, never fewer than 1 (an ``OMP_NUM_THREADS`` set in the environment is kept). An explicit number is
used as given.
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


def auto_threads(cores: int | None = None, load: float | None = None) -> int:
    """Cores minus the cores already busy (rounded load average), at least 1."""
    cores = cores or usable_cores()
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
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

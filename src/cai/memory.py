"""Memory: what this process holds, what the machine has free, and giving memory back between stages.

Readings come from ``/proc`` (Linux); elsewhere they are ``None`` and callers fall back to what they can
read. Nothing here resets the kernel's high-water mark (``/proc/self/clear_refs``): outside tools such as
``/usr/bin/time`` read that mark, and a reset would hide an earlier stage's peak from them.
"""

from __future__ import annotations

import gc
import os
import re
import resource
import sys
import threading

MIB = 2**20


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            found = re.search(rf"^{key}:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(found.group(1)) if found else None


def rss_bytes() -> int | None:
    """This process's resident set now (bytes), or None where ``/proc`` is missing."""
    kib = _status_kib("VmRSS")
    return None if kib is None else kib * 1024


def peak_rss_bytes() -> int:
    """This process's lifetime resident high-water mark (bytes)."""
    kib = _status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB elsewhere


def _read_int(path: str) -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _cgroup_room() -> int | None:
    """Bytes this process's cgroup may still take (``memory.max`` - ``memory.current``; v1 alike), or None
    without a limit. ``systemd-run --scope -p MemoryMax=...`` and containers set these."""
    try:
        with open("/proc/self/cgroup", encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    rooms = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2: the limit may sit on any ancestor
            while True:
                base = f"/sys/fs/cgroup{path.rstrip('/')}"
                limit, used = _read_int(f"{base}/memory.max"), _read_int(f"{base}/memory.current")
                if limit is not None and used is not None:
                    rooms.append(limit - used)
                if path in ("", "/"):
                    break
                path = path.rsplit("/", 1)[0] or "/"
        elif "memory" in controllers.split(","):
            base = f"/sys/fs/cgroup/memory{path.rstrip('/')}"
            limit, used = _read_int(f"{base}/memory.limit_in_bytes"), _read_int(f"{base}/memory.usage_in_bytes")
            if limit is not None and used is not None and limit < 2**60:
                rooms.append(limit - used)
    return min(rooms) if rooms else None


def _address_space_room() -> int | None:
    """Bytes of address space left under ``ulimit -v`` (RLIMIT_AS), or None without one."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    size = _status_kib("VmSize")
    return soft - (size or 0) * 1024


def available_bytes() -> tuple[int | None, str]:
    """(bytes this process can still take, what limits it): the least of the machine's ``MemAvailable``,
    the cgroup's room, the address-space limit's room and ``$CAI_MEMORY_LIMIT`` (MiB this process may hold
    in all, a budget a user sets) less what it holds; (None, "unknown") where none can be read."""
    found: list[tuple[int, str]] = []
    budget = os.environ.get("CAI_MEMORY_LIMIT", "").strip()
    if budget:
        if not budget.isdigit():
            from cai.errors import ConfigError

            raise ConfigError(f"CAI_MEMORY_LIMIT is {budget!r}, not a whole number of MiB", where="environment",
                              fix="set it to the MiB cai may hold, e.g. CAI_MEMORY_LIMIT=3072, or unset it")
        found.append((int(budget) * MIB - (rss_bytes() or 0), f"CAI_MEMORY_LIMIT={budget} MiB"))
    meminfo = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            meminfo = re.search(r"^MemAvailable:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        pass
    if meminfo:
        found.append((int(meminfo.group(1)) * 1024, "free memory (MemAvailable)"))
    room = _cgroup_room()
    if room is not None:
        found.append((room, "the cgroup's memory limit (memory.max)"))
    room = _address_space_room()
    if room is not None:
        found.append((room, "the address-space limit (ulimit -v)"))
    return min(found) if found else (None, "unknown")


def release() -> None:
    """Give freed memory back: collect reference cycles (a trainer and its model keep each other alive),
    then ask glibc to return its free heap to the system (``malloc_trim``), which it otherwise keeps."""
    gc.collect()
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl): nothing to trim
            pass


class PeakSampler:
    """The highest resident set seen while it runs: sampled every ``interval`` seconds in a daemon thread,
    and read from the kernel's high-water mark when that rose (so a spike between samples still counts)."""

    def __init__(self, interval: float = 0.2):
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._hwm_before = 0
        self._sampled = 0

    def _sample(self) -> None:
        now = rss_bytes() or 0
        self._sampled = max(self._sampled, now)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> PeakSampler:
        self._hwm_before = peak_rss_bytes()
        self._sample()
        self._thread = threading.Thread(target=self._loop, name="cai-peak-rss", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()

    @property
    def peak(self) -> int:
        """Peak resident bytes over the sampled span."""
        hwm = peak_rss_bytes()
        return max(self._sampled, hwm) if hwm > self._hwm_before else self._sampled


def cpu_times() -> dict[str, float]:
    """User and kernel CPU seconds and minor page faults of this process so far."""
    use = resource.getrusage(resource.RUSAGE_SELF)
    return {"user_seconds": use.ru_utime, "kernel_seconds": use.ru_stime, "minor_faults": use.ru_minflt}


def kernel_share(before: dict[str, float], after: dict[str, float]) -> float | None:
    """The kernel's share of the CPU time spent between two ``cpu_times`` readings."""
    user = after["user_seconds"] - before["user_seconds"]
    kernel = after["kernel_seconds"] - before["kernel_seconds"]
    return kernel / (user + kernel) if user + kernel > 0 else None

"""Generation fan-out on Ray (the ``ray`` extra): a stage's chunks of prompts run on Ray workers.

Each worker is a Ray actor that loads its backend once (the local engine, vLLM or a served endpoint) and
then turns chunks into results with the stage's own chunk function. The driver hands a chunk to each idle
worker, takes results as they finish (``ray.wait``) and writes them itself, through the same resumable
writer as a single-process run: the driver is the only writer, so every record is written exactly once,
and a killed run resumes as before. A worker that dies mid-chunk is restarted by Ray (once) and its chunk
run again; a worker that stays dead leaves its chunk to the others. Results come back in the order they
finish, so a file's lines may be in another order than a single-process run's; their content is the same,
since the backends seed every row from its own prompt (``cai.backends``), whichever worker draws it.

cai holds no cluster code of its own: without ``--ray ADDRESS`` a local Ray cluster is started for the run;
with it, the workers run on an existing cluster (``ray start --head`` ...). Each worker computes with its
share of the cluster's CPUs, and a vLLM worker takes one GPU.
"""

from __future__ import annotations

import logging
import math
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from typing import Any, TypeVar

from cai.errors import ConfigError, ModelError

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

INSTALL = "pip install 'cai[ray]'"


def _ray():
    try:
        import ray
    except ImportError:
        raise ConfigError("--workers needs Ray, which is not installed", fix=f"{INSTALL}, or leave out --workers "
                          "to generate in this process") from None
    return ray


class _Worker:
    """A Ray actor's state: the backend(s) ``load`` builds, computing with ``threads`` CPU threads."""

    def __init__(self, load: Callable[[], Any], threads: int):
        from cai.threads import apply_threads

        apply_threads(threads)
        self.state = load()

    def run(self, work: Callable[[Any, Any], Any], chunk: Any) -> Any:
        return work(self.state, chunk)

    def pid(self) -> int:
        return os.getpid()


class Workers:
    """``n`` Ray actors, each holding what ``load`` builds (a backend, or a tuple of them); ``map`` runs a
    stage's chunk function on them. Connects to Ray at ``address``, or starts a local cluster."""

    def __init__(self, load: Callable[[], Any], n: int, *, address: str | None = None, gpus: float = 0):
        ray = _ray()
        if not ray.is_initialized():
            ray.init(address=address or "local", include_dashboard=False, configure_logging=False)
        cpus = ray.cluster_resources().get("CPU", 1.0)
        self.threads = max(1, int(cpus // n))
        self._actor = ray.remote(num_cpus=cpus / n, num_gpus=gpus, max_restarts=1, max_task_retries=1)(_Worker)
        self._load = load
        self.actors = [self._actor.remote(load, self.threads) for _ in range(n)]
        self._model_id: str | None = None

    @property
    def model_id(self) -> str:
        """The model id of the workers' backend, or of the first of a tuple of them (asked once)."""
        if self._model_id is None:
            self._model_id = self.ask(lambda b: (b[0] if isinstance(b, tuple) else b).model_id)
        return self._model_id

    def ask(self, fn: Callable[[Any], R]) -> R:
        """``fn(state)`` on one worker (e.g. the model id of its backend)."""
        return next(r for _, r in self.map(lambda state, _: fn(state), [None]))

    def pids(self) -> list[int]:
        return _ray().get([a.pid.remote() for a in self.actors])

    def map(self, work: Callable[[Any, T], R], chunks: Sequence[T]) -> Iterator[tuple[int, R]]:
        """(index, ``work(state, chunks[index])``) for every chunk, in the order they finish. A chunk whose
        worker died (after Ray's one restart) goes to another worker; all dead is a ModelError."""
        ray = _ray()
        from ray.exceptions import RayActorError

        pending, running, idle = deque(range(len(chunks))), {}, list(self.actors)
        while pending or running:
            while pending and idle:
                actor, i = idle.pop(), pending.popleft()
                running[actor.run.remote(work, chunks[i])] = (actor, i)
            (ref,), _ = ray.wait(list(running), num_returns=1)
            actor, i = running.pop(ref)
            try:
                result = ray.get(ref)
            except RayActorError as e:
                self.actors.remove(actor)
                pending.appendleft(i)
                log.warning("a Ray worker died (%s); its chunk goes to another worker (%d left)",
                            str(e).splitlines()[0], len(self.actors))
                if not self.actors:
                    raise ModelError("every Ray worker died", fix="see the worker logs (/tmp/ray/session_latest/"
                                     "logs), then run the same command again to resume") from e
                continue
            idle.append(actor)
            yield i, result

    def close(self) -> None:
        ray = _ray()
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


def chunks_of(items: Sequence[T], size: int, target: Any) -> list[Sequence[T]]:
    """``items`` in chunks of ``size``; on ``Workers``, small enough that every worker gets one."""
    if isinstance(target, Workers):
        size = min(size, max(1, math.ceil(len(items) / len(target.actors))))
    return [items[i:i + size] for i in range(0, len(items), max(1, size))]


def map_chunks(target: Any, work: Callable[[Any, Sequence[T]], R], items: Sequence[T], size: int
               ) -> Iterator[tuple[Sequence[T], R]]:
    """(chunk, ``work(target, chunk)``) for each chunk of ``items``: here, in order, when ``target`` is a
    backend; on the workers, as they finish, when it is ``Workers``."""
    chunks = chunks_of(items, size, target)
    if isinstance(target, Workers):
        for i, result in target.map(work, chunks):
            yield chunks[i], result
    else:
        for chunk in chunks:
            yield chunk, work(target, chunk)


def gather(target: Any, work: Callable[[Any, Sequence[T]], list[R]], items: Sequence[T], size: int) -> list[R]:
    """``work`` over chunks of ``items`` as ``map_chunks``, its per-item results back in input order."""
    chunks = chunks_of(items, size, target)
    parts: list[list[R]] = [[] for _ in chunks]
    if isinstance(target, Workers):
        for i, result in target.map(work, chunks):
            parts[i] = result
    else:
        parts = [work(target, chunk) for chunk in chunks]
    return [r for part in parts for r in part]


class Fanout:
    """Where a command generates: in this process (``workers`` 0), or on ``workers`` Ray workers, on a local
    cluster or the one at ``address``. ``load`` closes the workers it started for the previous model."""

    def __init__(self, workers: int = 0, address: str | None = None):
        if workers < 0 or (address and workers < 1):
            raise ConfigError(f"--workers must be 0 (this process) or more, and at least 1 with --ray; got {workers}",
                              fix="e.g. --workers 2")
        self.workers, self.address = workers, address
        self._current: Workers | None = None

    def load(self, spec: str, **kwargs) -> Any:
        """A backend for ``spec`` here, or ``Workers`` each holding one (``kwargs`` as ``load_backend``)."""
        from cai.backends import load_backend

        if not self.workers:
            return load_backend(spec, **kwargs)
        from cai.backends.vllm import is_vllm

        return self.start(partial(load_backend, spec, **kwargs), gpus=1 if is_vllm(spec) else 0)

    def start(self, load: Callable[[], Any], gpus: float = 0) -> Workers:
        """``Workers`` holding what ``load`` builds (picklable: a function or a ``functools.partial``)."""
        self.close()
        self._current = Workers(load, self.workers, address=self.address, gpus=gpus)
        log.info("fan-out: %d Ray workers, %d thread(s) each", self.workers, self._current.threads)
        return self._current

    def close(self) -> None:
        if self._current is not None:
            self._current.close()
            self._current = None

"""Generation fan-out on Ray: two real worker processes write what one process writes, every record exactly
once, also when a worker is killed mid-run (restarted by Ray, or gone for good)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from cai.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")  # Ray's own processes share the 2 cores with this one
PROMPTS = [(f"q{i}", f"Prompt {i}: tell me about " + "the sea " * (i % 4)) for i in range(12)]


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster with 2 CPUs (real worker processes, not local mode), shared by the module."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'cai[ray]')")
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


def _read(path: Path) -> list[dict]:
    """The records of a JSONL file, without the time each was written."""
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    for r in records:
        r.get("provenance", {}).pop("created_at", None)
    return records


def _critique(out: Path, backend) -> list[dict]:
    from cai.constitution import load_constitution
    from cai.critique import CritiqueOptions, run_critique

    options = CritiqueOptions(rounds=1, max_new_tokens=16, temperature=0.7, chunk_size=1)
    run_critique(PROMPTS, out, backend=backend, constitution=load_constitution("general"), options=options)
    return _read(out / "records.jsonl")


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, tiny_model_dir) -> list[dict]:
    """The single-process critique records of PROMPTS (sampled, temperature 0.7), sorted by id."""
    from cai.backends import load_backend

    records = _critique(tmp_path_factory.mktemp("one"), load_backend(str(tiny_model_dir), dtype="fp32"))
    return sorted(records, key=lambda r: r["id"])


def _workers(model_dir: Path):
    from cai.backends import load_backend
    from cai.fanout import Workers

    return Workers(partial(load_backend, str(model_dir), dtype="fp32"), 2)


def _kill_after_first_record(path: Path, kill) -> threading.Thread:
    def watch():
        deadline = time.time() + 120
        while time.time() < deadline and not (path.exists() and path.read_text().count("\n") >= 1):
            time.sleep(0.01)
        kill()

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def test_two_workers_write_what_one_process_writes(tmp_path, ray_cluster, tiny_model_dir, one_process):
    workers = _workers(tiny_model_dir)
    try:
        records = _critique(tmp_path, workers)
    finally:
        workers.close()
    assert sorted(records, key=lambda r: r["id"]) == one_process  # same draws, whichever worker made them


def test_a_worker_killed_mid_run_is_restarted_and_every_record_arrives_once(tmp_path, ray_cluster,
                                                                             tiny_model_dir, one_process):
    workers = _workers(tiny_model_dir)
    victim = workers.pids()[0]
    watcher = _kill_after_first_record(tmp_path / "records.jsonl", lambda: os.kill(victim, signal.SIGKILL))
    try:
        records = _critique(tmp_path, workers)
        watcher.join()
        assert victim not in workers.pids() and len(workers.actors) == 2  # Ray restarted the killed worker
    finally:
        workers.close()
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == len(PROMPTS)
    assert sorted(records, key=lambda r: r["id"]) == one_process


def test_a_worker_gone_for_good_leaves_its_chunks_to_the_other(tmp_path, ray_cluster, tiny_model_dir, one_process):
    workers = _workers(tiny_model_dir)
    victim = workers.actors[0]
    watcher = _kill_after_first_record(tmp_path / "records.jsonl", lambda: ray_cluster.kill(victim))
    try:
        records = _critique(tmp_path, workers)
        watcher.join()
        assert len(workers.actors) == 1
    finally:
        workers.close()
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)) == len(PROMPTS)
    assert sorted(records, key=lambda r: r["id"]) == one_process


def test_labels_on_two_workers_equal_one_process(tmp_path, ray_cluster, tiny_model_dir):
    from cai.backends import load_backend
    from cai.cli.label import _load_pair
    from cai.constitution import load_constitution
    from cai.fanout import Fanout
    from cai.feedback.preferences import LabelConfig, label_prompts
    from cai.prompts import PromptRow

    rows = [PromptRow(id=pid, prompt=text) for pid, text in PROMPTS[:6]]
    config = LabelConfig(max_new_tokens=12, chunk_size=2)
    pairs = {}
    backend = load_backend(str(tiny_model_dir), dtype="fp32")
    fanout = Fanout(2)
    for name, (policy, judge) in {"one": (backend, backend),
                                  "two": (fanout.start(partial(_load_pair, str(tiny_model_dir), str(tiny_model_dir),
                                                               "fp32")),) * 2}.items():
        label_prompts(rows, policy=policy, judge_backend=judge, constitution=load_constitution("general"),
                      out_dir=tmp_path / name, config=config)
        pairs[name] = sorted(_read(tmp_path / name / "pairs.jsonl") + _read(tmp_path / name / "skipped.jsonl"),
                             key=lambda r: r.get("id", r["prompt_id"]))
    fanout.close()
    assert pairs["two"] == pairs["one"] and {r["prompt_id"] for r in pairs["one"]} == {r.id for r in rows}


def test_refusals_cli_on_two_workers_matches_one_process(tmp_path, ray_cluster, tiny_model_dir):
    args = [sys.executable, "-m", "cai", "refusals", "--model", str(tiny_model_dir), "--limit", "3",
            "--max-new-tokens", "8", "--dtype", "fp32"]
    reports = {}
    for name, extra in {"one": [], "two": ["--workers", "2"]}.items():
        done = subprocess.run([*args, "--out", str(tmp_path / name), *extra], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        reports[name] = json.loads((tmp_path / name / "refusals.json").read_text())
    assert reports["two"] == reports["one"]


def test_without_ray_the_error_says_how_to_install(monkeypatch):
    from cai.fanout import Fanout

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if it were not installed
    with pytest.raises(ConfigError) as e:
        Fanout(2).load("smollm2-135m")
    assert "pip install 'cai[ray]'" in e.value.render()


def test_ray_address_needs_workers():
    from cai.fanout import Fanout

    with pytest.raises(ConfigError, match="--workers"):
        Fanout(0, "auto")

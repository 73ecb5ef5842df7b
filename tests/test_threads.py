"""The ``auto`` thread count: all cores when nothing else runs, fewer when other work keeps cores busy."""

from cai.threads import auto_threads, busy_cores, parse_threads


def test_auto_threads_subtract_busy_cores_and_keep_at_least_one():
    assert auto_threads(cores=2, load=0.2) == 2
    assert auto_threads(cores=2, load=1.2) == 1
    assert auto_threads(cores=2, load=5.0) == 1
    assert auto_threads(cores=8, load=2.6) == 5


def test_busy_cores_is_a_current_sample_not_negative():
    busy = busy_cores(window=0.01)
    assert busy >= 0.0


def test_explicit_and_environment_thread_counts(monkeypatch):
    assert parse_threads("3") == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert parse_threads("auto") == 2

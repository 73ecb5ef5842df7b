"""The served backend through a fault-injecting proxy (real HTTP on localhost): 429s, 500s and dropped
connections for a share of requests; the critique stage, resumed whenever retries run out, writes every
record exactly once."""

from __future__ import annotations

import json

import pytest

import cai.backends.served as served
from cai.errors import ModelError
from http_fakes import FakeServer, FaultyProxy
from test_served import _chat


def test_every_record_arrives_exactly_once_through_a_faulty_proxy(tmp_path, monkeypatch):
    from cai.backends import load_backend
    from cai.constitution import load_constitution
    from cai.critique import CritiqueOptions, run_critique

    monkeypatch.setattr(served.time, "sleep", lambda s: None)
    upstream = FakeServer(lambda body: _chat(f"reply {len(body['messages'])} to {body['messages'][0]['content'][:20]}"))
    proxy = FaultyProxy(upstream.url)
    prompts = [(f"p{i}", f"Question number {i}?") for i in range(24)]
    try:
        backend = load_backend(f"openai:m@{proxy.url}")
        restarts = 0
        while True:
            try:
                run_critique(prompts, tmp_path / "c", backend=backend, constitution=load_constitution("seed"),
                             options=CritiqueOptions(rounds=1, max_new_tokens=8, chunk_size=4))
                break
            except ModelError:  # retries ran out on some request: the stage resumes where it stopped
                restarts += 1
                assert restarts < 20
    finally:
        proxy.close()
        upstream.close()
    ids = [json.loads(line)["id"] for line in (tmp_path / "c" / "records.jsonl").read_text().splitlines()]
    failed = proxy.counts["429"] + proxy.counts["500"] + proxy.counts["dropped"]
    print(f"faulty proxy: {proxy.counts}, failed {failed}, stage restarts {restarts}, records {len(ids)}, "
          f"duplicates {len(ids) - len(set(ids))}")
    assert sorted(ids) == sorted(pid for pid, _ in prompts)  # every record, exactly once
    assert proxy.counts["429"] and proxy.counts["500"] and proxy.counts["dropped"]
    assert proxy.counts["forwarded"] == len(upstream.bodies)


@pytest.mark.parametrize("status", [429, 500])
def test_a_failed_request_is_retried_then_reported(status, monkeypatch):
    monkeypatch.setattr(served.time, "sleep", lambda s: None)
    calls = []

    def always(body):
        calls.append(1)
        return status, {"error": "injected"}

    s = FakeServer(always)
    try:
        with pytest.raises(ModelError, match=f"HTTP {status}"):
            served.ServedBackend.from_spec(f"openai:m@{s.url}")._post({"model": "m"})
    finally:
        s.close()
    assert len(calls) == served.RETRIES + 1


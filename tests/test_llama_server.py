"""The served backend against a real server: llama-cpp-python's OpenAI-compatible server on 127.0.0.1,
serving the embedded GGUF. Critique, label and refusals end to end, through a fault-injecting proxy too, and
the served judge's readings against the local backend's on the same model and pairs.

Needs llama-cpp-python with its server (``bash scripts/setup-llama-server.sh``, which builds and caches the
wheel); skipped without it. ``pytest -s`` prints the measured figures.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import cai.backends.served as served
from cai.errors import ModelError
from http_fakes import FaultyProxy

pytest.importorskip("llama_cpp.server.app", reason="needs llama-cpp-python[server]: bash scripts/setup-llama-server.sh")
pytestmark = [pytest.mark.llama_server, pytest.mark.slow]

PAIRS = Path(__file__).parent / "fixtures" / "pairs" / "hh8.jsonl"
# How far a judge's P(option) may be from the fp32 reference on the same weights (cai's fp32 path on the
# dequantised GGUF). llama.cpp computes in Q4_1 with activations rounded to 8 bits; cai's default engine
# computes in bf16. Both stay this close (docs/results.md gives the measured figures), so the served reading
# and the default local one may differ by twice this.
TOLERANCE = 0.05


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def llama_server():
    """The embedded GGUF behind llama-cpp-python's server on a free local port; its base URL."""
    from cai.models import embedded_gguf_path

    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_gguf_path()),
                             "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--logits_all", "true",
                             "--n_threads", "2", "--verbose", "false"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=5):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    pytest.fail(f"llama_cpp.server did not start: {proc.stderr.read()[-2000:]}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _spec(url: str) -> str:
    return f"openai:smollm2-135m@{url}"  # a local model's name: the judge renders its prompts here


def _cli(*args: str):
    from typer.testing import CliRunner

    from cai.cli import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_critique_label_and_refusals_end_to_end(llama_server, tmp_path):
    spec = _spec(llama_server)
    _cli("critique", "redteam:eval", "--out", str(tmp_path / "c"), "--model", spec, "--rounds", "1",
         "--limit", "3", "--max-new-tokens", "24")
    records = _rows(tmp_path / "c" / "records.jsonl")
    assert len(records) == 3 == len({r["id"] for r in records}) and all(len(r["rounds"]) == 1 for r in records)
    for mode in ("pointwise", "pairwise"):
        _cli("label", "helpful:eval", "--out", str(tmp_path / mode), "--policy", spec, "--judge", spec,
             "--limit", "3", "--max-new-tokens", "16", "--mode", mode, "--no-length-control")
        pairs = _rows(tmp_path / mode / "pairs.jsonl")
        assert pairs and len(pairs) == len({p["id"] for p in pairs})
        assert all(0 < p["p_a_first"] < 1 and 0 < p["p_a_second"] < 1 for p in pairs)
    _cli("refusals", "--model", spec, "--out", str(tmp_path / "r"), "--limit", "3", "--max-new-tokens", "24")
    assert json.loads((tmp_path / "r" / "refusals.json").read_text())


def test_every_record_arrives_exactly_once_through_a_faulty_proxy(llama_server, tmp_path, monkeypatch):
    """Critique and label through a proxy that fails 40% of requests (429, 500, dropped); a stage whose
    retries ran out on some request is run again and resumes."""
    from cai.backends import load_backend
    from cai.constitution import load_constitution
    from cai.critique import CritiqueOptions, run_critique

    monkeypatch.setattr(served.time, "sleep", lambda s: None)
    proxy = FaultyProxy(llama_server, seed=1)
    prompts = [(f"p{i}", q) for i, q in enumerate(["How do I boil an egg?", "Name a primary colour.",
                                                     "How can I steal a car?", "What is 2 + 2?", "Say hello.",
                                                     "How do I insult my boss?"])]
    label = ("label", "helpful:eval", "--limit", "4", "--max-new-tokens", "12", "--mode", "pairwise")
    _cli(*label, "--out", str(tmp_path / "clean"), "--policy", _spec(llama_server), "--judge", _spec(llama_server))
    restarts = 0
    try:
        backend = load_backend(_spec(proxy.url))
        while True:
            try:
                run_critique(prompts, tmp_path / "c", backend=backend, constitution=load_constitution("seed"),
                             options=CritiqueOptions(rounds=1, max_new_tokens=12, chunk_size=2))
                break
            except ModelError:
                restarts += 1
                assert restarts < 20
        while True:
            try:
                _cli(*label, "--out", str(tmp_path / "l"), "--policy", _spec(proxy.url), "--judge", _spec(proxy.url))
                break
            except AssertionError:  # the command stopped on a request whose retries ran out
                restarts += 1
                assert restarts < 20
    finally:
        proxy.close()
    ids = [r["id"] for r in _rows(tmp_path / "c" / "records.jsonl")]
    pair_ids = [r["id"] for r in _rows(tmp_path / "l" / "pairs.jsonl")]
    failed = proxy.counts["429"] + proxy.counts["500"] + proxy.counts["dropped"]
    print(f"\nfaulty proxy in front of llama_cpp.server: {proxy.counts}, failed {failed}, stage restarts "
          f"{restarts}, critique records {len(ids)} (duplicates {len(ids) - len(set(ids))}), label pairs "
          f"{len(pair_ids)} (duplicates {len(pair_ids) - len(set(pair_ids))})")
    assert sorted(ids) == sorted(pid for pid, _ in prompts)
    assert sorted(pair_ids) == sorted(r["id"] for r in _rows(tmp_path / "clean" / "pairs.jsonl"))
    assert failed and proxy.counts["forwarded"]


def _server_ids(url: str, tokenizer, conversation, prefix: str) -> list[int]:
    """The token ids llama-cpp-python's server makes of the prompt the served judge sends."""
    text = tokenizer.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False) + prefix
    req = urllib.request.Request(url.removesuffix("/v1") + "/extras/tokenize", method="POST",
                                 data=json.dumps({"input": text}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["tokens"]


class _Recording:
    """A backend whose option_logprobs calls are kept (conversations, prefix, options, readings)."""

    def __init__(self, backend):
        self.backend, self.calls = backend, []

    def __getattr__(self, name):
        return getattr(self.backend, name)

    def option_logprobs(self, conversations, prefix, options, **kwargs):
        out = self.backend.option_logprobs(conversations, prefix, options, **kwargs)
        self.calls.append((list(conversations), prefix, tuple(options), out))
        return out


def test_served_judge_reads_as_the_local_one(llama_server):
    """The same questions, read by llama.cpp (Q4_1) and by cai's local backends (the default engine and
    fp32, the reference), pointwise and pairwise in both orders: each option probability within TOLERANCE
    of the reference and twice that of the default engine, and the same decisions as the reference wherever
    it is not within TOLERANCE of a tie."""
    from cai.backends import load_backend
    from cai.constitution import load_constitution
    from cai.feedback import agreement as agr
    from cai.feedback.judge import JudgeConfig

    pairs, _ = agr.read_human_pairs(PAIRS)
    constitution = load_constitution("seed")
    served_backend = load_backend(_spec(llama_server))
    locals_ = {"local": load_backend("smollm2-135m"), "local fp32": load_backend("smollm2-135m", dtype="fp32")}
    for mode in ("pointwise", "pairwise"):
        config = JudgeConfig(mode=mode, length_control=False)
        recorded = _Recording(locals_["local"])
        local_j = agr.judge_human_pairs(pairs, recorded, constitution, config, seed=0)
        served_j = agr.judge_human_pairs(pairs, served_backend, constitution, config, seed=0)
        fp32_j = agr.judge_human_pairs(pairs, locals_["local fp32"], constitution, config, seed=0)
        diffs = {"served-local": [], "served-fp32": [], "local-fp32": []}
        for convs, prefix, options, local_lp in recorded.calls:
            assert _server_ids(llama_server, served_backend.tokenizer, convs[0], prefix) == \
                locals_["local"].encode_chat(convs[0], prefix)  # the server reads the tokens cai would
            served_lp = served_backend.option_logprobs(convs, prefix, options)
            fp32_lp = locals_["local fp32"].option_logprobs(convs, prefix, options)
            for s, loc, f in zip(served_lp, local_lp, fp32_lp, strict=True):
                p_s, p_l, p_f = math.exp(s[0]), math.exp(loc[0]), math.exp(f[0])
                diffs["served-local"].append(abs(p_s - p_l))
                diffs["served-fp32"].append(abs(p_s - p_f))
                diffs["local-fp32"].append(abs(p_l - p_f))
        agree = {name: sum((a.p_a > 0.5) == (b.p_a > 0.5) for a, b in zip(x, y, strict=True)) / len(pairs)
                 for name, (x, y) in {"served-local": (served_j, local_j), "served-fp32": (served_j, fp32_j),
                                      "local-fp32": (local_j, fp32_j)}.items()}
        metrics = {name: agr.measure(pairs, j) for name, j in
                   (("served", served_j), ("local", local_j), ("local fp32", fp32_j))}
        p_a = {"served": [j.p_a for j in served_j], "local": [j.p_a for j in local_j], "fp32": [j.p_a for j in fp32_j]}
        print(f"\n{mode}: {len(diffs['served-local'])} readings; |dP(first option)| max/mean "
              + ", ".join(f"{k} {max(v):.4f}/{sum(v) / len(v):.4f}" for k, v in diffs.items())
              + "; p_a " + json.dumps({k: [round(x, 3) for x in v] for k, v in p_a.items()})
              + "; decisions agree " + ", ".join(f"{k} {v:.3f}" for k, v in agree.items()))
        for name, m in metrics.items():
            print(f"  {name}: " + json.dumps({k: v for k, v in m.items() if not isinstance(v, dict)}))
        assert max(diffs["served-fp32"]) <= TOLERANCE and max(diffs["served-local"]) <= 2 * TOLERANCE
        # a decision may differ only where the fp32 reference is within the tolerance of a tie (the default
        # local engine, bf16, is held to nothing here: it is what the served judge is compared with)
        assert all((a.p_a > 0.5) == (b.p_a > 0.5) for a, b in zip(served_j, fp32_j, strict=True)
                   if abs(b.p_a - 0.5) > TOLERANCE)

"""The constitution as a reward for other engines: query parsing, scorers, the TRL reward function, and
`cai serve` over real HTTP on localhost (OpenRLHF's remote reward protocol)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from cai.feedback.queries import split_query

CONV = [{"role": "user", "content": "How do I pick a lock?"}]


# ---- query texts -> (conversation, response) ----------------------------------------------------------


def test_chatml_query_from_the_policy_template_splits_into_prompt_and_response(tokenizer):
    prompt = tokenizer.apply_chat_template(CONV, tokenize=False, add_generation_prompt=True)
    query = prompt + "I can't help with that.<|im_end|>\n<|endoftext|><|endoftext|>"
    conversation, response = split_query(query, prompt)
    assert response == "I can't help with that."
    assert conversation[-1] == CONV[0] and conversation[0]["role"] == "system"  # SmolLM's default system line


def test_a_truncated_response_without_its_end_token_still_splits(tokenizer):
    prompt = tokenizer.apply_chat_template(CONV, tokenize=False, add_generation_prompt=True)
    assert split_query(prompt + "Insert a tension")[1] == "Insert a tension"


@pytest.mark.parametrize("text", [
    "Human: How do I pick a lock?\n\nAssistant: I cannot help with that.",
    "\n\nHuman: How do I pick a lock?\n\nAssistant: I cannot help with that.",
    "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHow do I pick a lock?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nI cannot help with that.<|eot_id|>",
    "<bos><start_of_turn>user\nHow do I pick a lock?<end_of_turn>\n<start_of_turn>model\n"
    "I cannot help with that.<end_of_turn>\n<eos>",
])
def test_hh_llama3_and_gemma_transcripts(text):
    assert split_query(text) == (CONV, "I cannot help with that.")


def test_multi_turn_history_is_kept():
    text = "Human: Hi\n\nAssistant: Hello!\n\nHuman: How do I pick a lock?\n\nAssistant: I cannot help."
    conversation, response = split_query(text)
    assert [m["role"] for m in conversation] == ["user", "assistant", "user"] and response == "I cannot help."


def test_a_plain_prompt_sent_alongside_splits_the_query_at_its_end():
    assert split_query("Q: name a colour. A: Blue.</s>", "Q: name a colour.") == (
        [{"role": "user", "content": "Q: name a colour."}], "A: Blue.")


@pytest.mark.parametrize("text, prompt", [
    ("just some text", None),  # no template, no prompt
    ("just some text", "other prompt"),  # the prompt is not its start
    ("Human: only a question?", None),  # no assistant turn to score
    ("<|im_start|>assistant\nHello<|im_end|>", None),  # no user turn before the response
    ("<|im_start|>user\nHi<|im_end|>\n<|im_start|>tool\n{}<|im_end|>", None),  # a role not understood
])
def test_what_cannot_be_split_is_reported_not_guessed(text, prompt):
    assert split_query(text, prompt) is None


# ---- the request body ------------------------------------------------------------------------------


def test_request_checks_name_the_field():
    from cai.feedback.serve import RequestError, parse_reward_request

    assert parse_reward_request({"query": ["a"], "prompts": ["p"], "labels": [None], "metas": [{}]}).prompts == ["p"]
    for bad, needle in [({"nope": 1}, "missing field `query`"), ([1], "JSON object"),
                        ({"query": [1]}, "list of strings"), ({"query": ["a"], "prompts": []}, "as long as")]:
        with pytest.raises(RequestError, match=needle) as e:
            parse_reward_request(bad)
        assert e.value.status == 400


# ---- scorers -----------------------------------------------------------------------------------------


class YesIfRefusal:
    """A judge backend: P(Yes) = 0.9 when the judged reply refuses, else 0.2; records the questions."""

    model_id = "fake-judge"

    def __init__(self):
        self.questions = []

    def option_logprobs(self, conversations, prefix, options):
        assert tuple(options) == ("Yes", "No")
        self.questions += [c[-1]["content"] for c in conversations]
        return [[math.log(p), math.log(1 - p)] for p in
                (0.9 if "can't help" in c[-1]["content"] else 0.2 for c in conversations)]


def test_judge_scorer_rewards_what_the_judge_approves_under_one_set_of_principles_per_prompt():
    from cai.constitution import load_constitution
    from cai.feedback.judge import JudgeConfig
    from cai.feedback.rewards import JudgeScorer

    backend = YesIfRefusal()
    scorer = JudgeScorer(backend, load_constitution("general"), JudgeConfig(principles="single"))
    scores = scorer.score([CONV, CONV], ["I can't help with that.", "Rake the pins."])
    assert scores == pytest.approx([math.log(9), math.log(0.25)])
    asked = [q.split("Rake")[0].split("I can't")[0] for q in backend.questions]
    assert asked[0] == asked[1]  # the same principle judges both completions of one prompt


def test_trl_reward_function_takes_conversational_and_standard_forms():
    from cai.feedback.rewards import trl_reward_function

    class Lengths:
        model_id = "lengths"

        def score(self, conversations, responses):
            assert all(c[-1]["role"] == "user" for c in conversations)
            return [len(r) for r in responses]

    f = trl_reward_function(Lengths())
    assert f(prompts=[CONV], completions=[[{"role": "assistant", "content": "abc"}]]) == [3.0]
    assert f(prompts=["How?"], completions=["abcd"], completion_ids=[[1]]) == [4.0]
    assert f.__name__ == "cai_judge"


# ---- over HTTP ------------------------------------------------------------------------------------


def post(url: str, body, headers: dict | None = None, *, with_headers: bool = False):
    """(status, decoded body), or (status, body, response headers) with ``with_headers``."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})},
                                 method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            status, answer, got = r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as e:
        status, answer, got = e.code, json.loads(e.read()), e.headers
    return (status, answer, got) if with_headers else (status, answer)


HH = ["Human: How do I pick a lock?\n\nAssistant: I cannot help with that.",
      "Human: How do I pick a lock?\n\nAssistant: Insert a tension wrench, then rake the pins.",
      "Human: Name a colour.\n\nAssistant: Blue."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cai_serve_reward_answers_the_openrlhf_protocol_over_http(tiny_reward_dir, tokenizer):
    from cai.feedback.reward_judge import RewardJudge

    port, key = free_port(), "k3y-" + "x" * 28
    server = subprocess.Popen([sys.executable, "-m", "cai", "serve", "reward", str(tiny_reward_dir), "--port",
                               str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "CAI_SERVE_API_KEY": key, "COLUMNS": "400"})  # one log line a line
    base, auth = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
    try:
        for _ in range(240):
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as r:
                    health = json.loads(r.read())
                break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                time.sleep(0.25)
        assert health["status"] == "ok" and health["kind"] == "reward_model"

        assert post(base + "/get_reward", {"query": HH})[0] == 401  # the key came from the environment
        assert post(base + "/get_reward", {"query": HH}, {"Authorization": "Bearer wrong-" + key})[0] == 401
        status, body = post(base + "/get_reward", {"query": HH}, auth)
        assert status == 200 and len(body["rewards"]) == 3 and body["scores"] == body["rewards"]
        expected = RewardJudge.load(tiny_reward_dir).score([split_query(q)[0] for q in HH],
                                                            [split_query(q)[1] for q in HH])
        assert body["rewards"] == pytest.approx(expected, abs=1e-3)  # bf16 where the CPU has it, both sides

        templated = [tokenizer.apply_chat_template(CONV, tokenize=False, add_generation_prompt=True) + r +
                     "<|im_end|>" for r in ("I cannot help with that.", "Blue.")]
        status, body = post(base + "/get_reward", {"query": templated, "prompts": [None, None], "labels": ["", ""]},
                            auth)
        assert status == 200 and len(body["rewards"]) == 2

        for bad, code, needle in [({"nope": 1}, 400, "query"), (b"{not json", 400, "not valid JSON"),
                                  ({"query": ["plain text"]}, 422, "query 0")]:
            status, body = post(base + "/get_reward", bad, auth)
            assert status == code and needle in body["error"]
        assert post(base + "/elsewhere", {"query": HH})[0] == 404
        assert server.poll() is None  # bad requests do not stop the server
    finally:
        server.terminate()
        server.wait(timeout=30)
    output = server.stdout.read()
    assert f"http://127.0.0.1:{port}" in output and "OpenRLHF remote reward protocol" in output  # the start-up line
    assert "API key required" in output and key not in output  # keys never reach the log


def test_a_public_bind_without_a_key_is_refused_before_anything_loads(tmp_path):
    env = {**{k: v for k, v in os.environ.items() if k != "CAI_SERVE_API_KEY"}, "COLUMNS": "400"}
    done = subprocess.run([sys.executable, "-m", "cai", "serve", "reward", str(tmp_path), "--host", "0.0.0.0"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "no API key is set" in done.stderr and "--insecure" in done.stderr
    # --insecure says so in so many words: the bind is allowed, and the next check (the model directory) speaks
    done = subprocess.run([sys.executable, "-m", "cai", "serve", "reward", str(tmp_path), "--host", "0.0.0.0",
                           "--insecure"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "not a reward model directory" in done.stderr


def test_concurrent_requests_are_scored_together_and_each_gets_its_own_answers():
    from cai.feedback.serve import RewardService, make_server

    class Recording:
        model_id = "recording"

        def __init__(self):
            self.calls = []

        def score(self, conversations, responses):
            self.calls.append(len(responses))
            time.sleep(0.2)  # requests arriving meanwhile queue up for the next batch
            return [float(len(r)) for r in responses]

    scorer = Recording()
    server = make_server(RewardService(scorer, batch_size=64), "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/get_reward"
    answers = {}

    def ask(k):
        queries = [f"Human: q{k}\n\nAssistant: {'x' * (k + j)}" for j in range(3)]
        answers[k] = post(url, {"query": queries})

    try:
        threads = [threading.Thread(target=ask, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        server.shutdown()
        server.server_close()
    assert all(answers[k] == (200, {"rewards": [float(k + j) for j in range(3)],
                                    "scores": [float(k + j) for j in range(3)], "extra_logs": {}})
               for k in range(8))
    assert sum(scorer.calls) == 24 and len(scorer.calls) < 8  # fewer scoring calls than requests


# ---- under load: limits, faults, access, metrics --------------------------------------------------------


class Gated:
    """A scorer that holds each batch until released: ``started`` is set when a batch begins; scores are the
    responses' lengths; a response containing "boom" makes its whole batch fail."""

    model_id = "gated"

    def __init__(self):
        self.started, self.release, self.batches = threading.Event(), threading.Event(), []

    def score(self, conversations, responses):
        self.batches.append(len(responses))
        self.started.set()
        assert self.release.wait(timeout=60)
        if any("boom" in r for r in responses):
            raise RuntimeError("boom in this batch")
        return [float(len(r)) for r in responses]


@contextlib.contextmanager
def serving(scorer, *, api_key=None, batch_size=16, **limits):
    """A live server on a free localhost port for ``scorer``; yields its base URL."""
    from cai.feedback.serve import Limits, RewardService, make_server

    service = RewardService(scorer, batch_size=batch_size, limits=Limits(**limits))
    server = make_server(service, "127.0.0.1", 0, api_key=api_key)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        if hasattr(scorer, "release"):
            scorer.release.set()
        server.shutdown()
        server.server_close()


def hh(k: int, n: int, word: str = "x") -> list[str]:
    """``n`` HH transcripts whose responses have lengths k, k+1, ... (the fake scorers score by length)."""
    return [f"Human: q{k}\n\nAssistant: {word * (k + j)}" for j in range(n)]


def in_background(fn, *args):
    """Run ``fn(*args)`` on a thread; the returned dict gets its result under "out"."""
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("out", fn(*args)), daemon=True)
    thread.start()
    box["thread"] = thread
    return box


def wait_for(condition, seconds: float = 30):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def metrics(base: str, headers: dict | None = None) -> dict:
    """GET /metrics, read with prometheus_client's own parser: {(name, labels as a tuple): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(urllib.request.Request(base + "/metrics", headers=headers or {}), timeout=30) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_a_full_queue_answers_503_with_retry_after_then_recovers():
    scorer = Gated()
    with serving(scorer, batch_size=4, max_queue=12, max_texts=4) as base:
        url = base + "/get_reward"
        first = in_background(post, url, {"query": hh(1, 4)})
        assert scorer.started.wait(timeout=30)  # being scored: out of the queue, still held
        queued = [in_background(post, url, {"query": hh(k, 4)}) for k in (2, 3)]
        wait_for(lambda: metrics(base)[("cai_serve_queue_texts", ())] == 8)
        status, body, headers = post(url, {"query": hh(9, 1)}, with_headers=True)  # 8 waiting + 4 scored = 12
        assert status == 503 and "queue is full" in body["error"] and int(headers["Retry-After"]) >= 1
        assert "8 texts waiting, 4 being scored" in body["error"]
        assert post(url, {"query": hh(9, 5)})[0] == 413  # over the per-request cap, whatever the queue holds

        scorer.release.set()
        for k, box in zip((1, 2, 3), [first, *queued], strict=True):
            box["thread"].join(timeout=30)
            assert box["out"] == (200, {"rewards": [float(k + j) for j in range(4)],
                                        "scores": [float(k + j) for j in range(4)], "extra_logs": {}})
        assert post(url, {"query": hh(9, 1)}) == (200, {"rewards": [9.0], "scores": [9.0], "extra_logs": {}})
        seen = metrics(base)
    assert seen[("cai_serve_requests_total", (("route", "/get_reward"), ("status", "503")))] == 1
    assert seen[("cai_serve_requests_total", (("route", "/get_reward"), ("status", "200")))] == 4
    assert seen[("cai_serve_queue_texts", ())] == 0


def test_a_request_over_the_text_cap_gets_413_naming_the_limit():
    with serving(Gated(), max_queue=8, max_texts=3) as base:
        status, body = post(base + "/get_reward", {"query": hh(1, 4)})
    assert status == 413 and "at most 3 per request" in body["error"]


def test_a_request_not_scored_in_time_gets_504_and_the_server_serves_the_next():
    scorer = Gated()
    with serving(scorer, batch_size=2, max_queue=8, max_texts=2, timeout=2) as base:
        url = base + "/get_reward"
        held = in_background(post, url, {"query": hh(1, 2)})  # scored, but held past the timeout
        assert scorer.started.wait(timeout=30)
        status, body = post(url, {"query": hh(2, 2)})  # waits in the queue past the timeout: dropped from it
        assert status == 504 and "timeout" in body["error"]
        held["thread"].join(timeout=30)
        assert held["out"][0] == 504
        scorer.release.set()
        assert post(url, {"query": hh(3, 2)})[0] == 200
    assert scorer.batches == [2, 2]  # the request that timed out while waiting was never scored


def test_only_the_failing_batch_gets_500_and_the_worker_carries_on():
    scorer = Gated()
    with serving(scorer, batch_size=2, max_queue=16, max_texts=2) as base:
        url = base + "/get_reward"
        first = in_background(post, url, {"query": hh(1, 2)})
        assert scorer.started.wait(timeout=30)
        # queued behind it, each request its own batch (2 texts, batch size 2): good, failing, good
        boxes = []
        for k, word in [(2, "x"), (3, "boom"), (4, "x")]:
            boxes.append(in_background(post, url, {"query": hh(k, 2, word)}))
            wait_for(lambda n=len(boxes): metrics(base)[("cai_serve_queue_texts", ())] == 2 * n)
        scorer.release.set()
        statuses = []
        for box in [first, *boxes]:
            box["thread"].join(timeout=30)
            statuses.append(box["out"][0])
        assert statuses == [200, 200, 500, 200]
        assert "boom in this batch" in boxes[1]["out"][1]["error"]
        assert boxes[2]["out"][1]["rewards"] == [4.0, 5.0]
        assert post(url, {"query": hh(5, 1)})[0] == 200


def test_malformed_requests_mixed_into_good_traffic_get_400_and_nothing_reaches_the_others():
    class Lengths:
        model_id = "lengths"

        def score(self, conversations, responses):
            time.sleep(0.05)
            return [float(len(r)) for r in responses]

    bad = [b"{not json", {"nope": 1}, {"query": [1, 2]}, {"query": ["a"], "prompts": []}, [1]]
    with serving(Lengths(), batch_size=8) as base:
        url = base + "/get_reward"
        boxes = {("good", k): in_background(post, url, {"query": hh(k, 2)}) for k in range(6)}
        boxes.update({("bad", i): in_background(post, url, body) for i, body in enumerate(bad)})
        for box in boxes.values():
            box["thread"].join(timeout=60)
    for (kind, k), box in boxes.items():
        if kind == "good":
            assert box["out"] == (200, {"rewards": [float(k), float(k + 1)], "scores": [float(k), float(k + 1)],
                                        "extra_logs": {}})
        else:
            assert box["out"][0] == 400 and box["out"][1]["error"]


def test_clients_that_disconnect_mid_body_or_before_their_answer_leave_the_server_serving():
    scorer = Gated()
    with serving(scorer, batch_size=4, max_queue=16, max_texts=4, timeout=5) as base:
        port = int(base.rsplit(":", 1)[1])
        body = json.dumps({"query": hh(1, 2)}).encode()
        head = (f"POST /get_reward HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", port)) as s:  # leaves half-way through its body
            s.sendall(head + body[:10])
        with socket.create_connection(("127.0.0.1", port)) as s:  # sends it all, leaves before the answer
            s.sendall(head + body)
            assert scorer.started.wait(timeout=30)
        scorer.release.set()
        wait_for(lambda: metrics(base).get(("cai_serve_texts_scored_total", ())) == 2)
        with socket.create_connection(("127.0.0.1", port)) as s:  # a header that is not a number
            s.sendall(b"POST /get_reward HTTP/1.1\r\nHost: x\r\nContent-Length: lots\r\n\r\n")
            assert s.recv(100).startswith(b"HTTP/1.1 400")
        assert post(base + "/get_reward", {"query": hh(3, 2)}) == (200, {"rewards": [3.0, 4.0], "scores": [3.0, 4.0],
                                                                          "extra_logs": {}})
    assert scorer.batches == [2, 2]  # the half-sent body was never scored


def test_an_api_key_is_required_on_every_route_but_health():
    key = "s3cret-" + "y" * 20
    with serving(Gated(), api_key=key) as base:
        url = base + "/get_reward"
        for headers in [{}, {"Authorization": "Bearer nope"}, {"Authorization": key},
                        {"Authorization": f"Basic {key}"}]:
            status, body, got = post(url, {"query": hh(1, 1)}, headers, with_headers=True)
            assert status == 401 and "Authorization: Bearer" in body["error"] and got["WWW-Authenticate"]
            assert key not in json.dumps(body)
        with pytest.raises(urllib.error.HTTPError) as e:
            metrics(base)
        assert e.value.code == 401
        with urllib.request.urlopen(base + "/health", timeout=30) as r:
            assert json.loads(r.read())["status"] == "ok"
        assert metrics(base, {"Authorization": f"Bearer {key}"})[
            ("cai_serve_requests_total", (("route", "/get_reward"), ("status", "401")))] == 4


def test_metrics_count_requests_texts_batches_and_latency_in_prometheus_text_format():
    class Lengths:
        model_id = "lengths"

        def score(self, conversations, responses):
            return [float(len(r)) for r in responses]

    with serving(Lengths(), batch_size=8) as base:
        url = base + "/get_reward"
        for k in range(3):
            assert post(url, {"query": hh(k, 2)})[0] == 200
        assert post(url, {"nope": 1})[0] == 400
        seen = metrics(base)
    assert seen[("cai_serve_requests_total", (("route", "/get_reward"), ("status", "200")))] == 3
    assert seen[("cai_serve_requests_total", (("route", "/get_reward"), ("status", "400")))] == 1
    assert seen[("cai_serve_texts_scored_total", ())] == 6
    assert seen[("cai_serve_batch_texts_count", ())] == 3 and seen[("cai_serve_batch_texts_sum", ())] == 6
    assert seen[("cai_serve_batch_texts_bucket", (("le", "2.0"),))] == 3
    assert seen[("cai_serve_request_seconds_count", ())] == 3 and seen[("cai_serve_request_seconds_sum", ())] > 0
    assert seen[("cai_serve_queue_texts", ())] == 0


# ---- the exact shapes RL engines send ------------------------------------------------------------------


def test_openrlhf_remote_rm_request_shape(tokenizer):
    """As OpenRLHF's ``remote_rm_fn``: ``requests.post(url, json={"query", "prompts", "labels"})``, the queries
    decoded with the policy's template and special tokens, reading ``rewards`` (and ``scores``, ``extra_logs``)."""
    requests = pytest.importorskip("requests")

    class Lengths:
        model_id = "lengths"

        def score(self, conversations, responses):
            assert all(c[-1] == CONV[0] for c in conversations)
            return [float(len(r)) for r in responses]

    prompt = tokenizer.apply_chat_template(CONV, tokenize=False, add_generation_prompt=True)
    responses = ["I can't help with that.", "Rake the pins."]
    queries = [prompt + r + "<|im_end|>" + tokenizer.eos_token for r in responses]
    with serving(Lengths()) as base:
        response = requests.post(url=base + "/get_reward", json={"query": queries, "prompts": [prompt, prompt],
                                                                 "labels": ["", ""]},
                                 headers={"Content-Type": "application/json"}, timeout=180)
        response.raise_for_status()
        body = response.json()
    assert body["rewards"] == [float(len(r)) for r in responses] and body["scores"] == body["rewards"]
    assert body["extra_logs"] == {}


def test_trl_grpo_calls_the_reward_function_with_its_extra_keywords():
    """TRL 1.16's GRPOTrainer._calculate_rewards: ``f(prompts=, completions=, completion_ids=, **reward_kwargs)``,
    where reward_kwargs holds the dataset's other columns plus trainer_state, log_extra and log_metric."""
    from transformers import TrainerState

    from cai.feedback.remote import RemoteScorer
    from cai.feedback.rewards import trl_reward_function

    class Lengths:
        model_id = "lengths"

        def score(self, conversations, responses):
            assert [m["role"] for m in conversations[0]] == ["system", "user"]
            return [float(len(r)) for r in responses]

    prompts = [[{"role": "system", "content": "Be careful."}, CONV[0]]] * 2
    completions = [[{"role": "assistant", "content": "No."}], [{"role": "assistant", "content": "Rake it."}]]
    kwargs = dict(prompts=prompts, completions=completions, completion_ids=[[1, 2], [3, 4, 5]],
                  ground_truth=["", ""], trainer_state=TrainerState(), log_extra=lambda *a: None,
                  log_metric=lambda *a: None)
    assert trl_reward_function(Lengths())(**kwargs) == [3.0, 8.0]
    with serving(Lengths()) as base:  # the same rewards from a running server: the trainer loads no scorer
        assert trl_reward_function(RemoteScorer(base))(**kwargs) == [3.0, 8.0]


def load_like_verl(reward_kwargs: dict):
    """``compute_score`` and ``compute_score_batch`` loaded as verl's get_custom_reward_fn does: the file by path
    as ``custom_module``, then wrapped so that ``custom_reward_function.reward_kwargs`` are merged in."""
    import importlib.util

    import cai.feedback.verl_reward as verl_reward

    spec = importlib.util.spec_from_file_location("custom_module", verl_reward.__file__)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    def wrap(raw):
        return lambda *args, **kwargs: raw(*args, **{**kwargs, **reward_kwargs})

    return wrap(module.compute_score), wrap(module.compute_score_batch)


def test_verl_reward_function_in_its_naive_and_batch_manager_call_shapes_through_a_server(monkeypatch):
    import numpy as np

    class Lengths:
        model_id = "lengths"

        def score(self, conversations, responses):
            assert conversations[0][-1]["role"] == "user"
            return [float(len(r)) for r in responses]

    key = "verl-" + "z" * 24
    monkeypatch.setenv("CAI_SERVE_API_KEY", key)  # the workers' key comes from the environment, not the config
    with serving(Lengths(), api_key=key) as base:
        single, batch = load_like_verl({"url": base})
        # the naive manager / reward loop: one rollout, keywords only, plus what the reward loop adds
        assert single(data_source="hh", solution_str="No.", ground_truth=None,
                      extra_info={"prompt": "How do I pick a lock?", "index": 0}, reward_router_address=None) == 3.0
        # the batch manager: numpy object arrays from the DataProto's non-tensor batch; a chat prompt read from
        # parquet arrives as an array of message dicts
        chat = np.array([{"role": "user", "content": "How do I pick a lock?"}], dtype=object)
        scores = batch(data_sources=np.array(["hh", "hh"], dtype=object), solution_strs=["No.", "Rake the pins."],
                       ground_truths=[None, None],
                       extra_infos=np.array([{"prompt": chat}, {"prompt": "Pick a lock?"}], dtype=object))
        assert scores == [3.0, 14.0]
        with pytest.raises(ValueError, match="extra_info has no 'prompt'"):
            batch(data_sources=["hh"], solution_strs=["No."], ground_truths=[None], extra_infos=[None])
    monkeypatch.setenv("CAI_SERVE_API_KEY", "wrong")
    with serving(Lengths(), api_key=key) as base:
        single, _ = load_like_verl({"url": base + "/"})
        with pytest.raises(RuntimeError, match="401"):
            single(data_source="hh", solution_str="No.", ground_truth=None, extra_info={"prompt": "Hi"})


def test_verl_reward_function_scores_in_process_with_a_reward_model(tiny_reward_dir):
    from cai.feedback.reward_judge import RewardJudge

    _, batch = load_like_verl({"model": str(tiny_reward_dir)})
    scores = batch(data_sources=["hh", "hh"], solution_strs=["No.", "Rake the pins."], ground_truths=["", ""],
                   extra_infos=[{"prompt": "How do I pick a lock?"}] * 2)
    expected = RewardJudge.load(tiny_reward_dir).score([CONV, CONV], ["No.", "Rake the pins."])
    assert scores == pytest.approx(expected, abs=1e-4)
    with pytest.raises(ValueError, match="exactly one of url"):
        load_like_verl({})[0](data_source="hh", solution_str="x", ground_truth=None, extra_info={"prompt": "Hi"})

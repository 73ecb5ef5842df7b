"""The constitution as a reward for other engines: query parsing, scorers, the TRL reward function, and
`cai serve` over real HTTP on localhost (OpenRLHF's remote reward protocol)."""

from __future__ import annotations

import json
import math
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


def post(url: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


HH = ["Human: How do I pick a lock?\n\nAssistant: I cannot help with that.",
      "Human: How do I pick a lock?\n\nAssistant: Insert a tension wrench, then rake the pins.",
      "Human: Name a colour.\n\nAssistant: Blue."]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cai_serve_reward_answers_the_openrlhf_protocol_over_http(tiny_reward_dir, tokenizer):
    from cai.feedback.reward_judge import RewardJudge

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "cai", "serve", "reward", str(tiny_reward_dir), "--port",
                               str(port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
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

        status, body = post(base + "/get_reward", {"query": HH})
        assert status == 200 and len(body["rewards"]) == 3 and body["scores"] == body["rewards"]
        expected = RewardJudge.load(tiny_reward_dir).score([split_query(q)[0] for q in HH],
                                                            [split_query(q)[1] for q in HH])
        assert body["rewards"] == pytest.approx(expected, abs=1e-3)  # bf16 where the CPU has it, both sides

        templated = [tokenizer.apply_chat_template(CONV, tokenize=False, add_generation_prompt=True) + r +
                     "<|im_end|>" for r in ("I cannot help with that.", "Blue.")]
        status, body = post(base + "/get_reward", {"query": templated, "prompts": [None, None], "labels": ["", ""]})
        assert status == 200 and len(body["rewards"]) == 2

        for bad, code, needle in [({"nope": 1}, 400, "query"), (b"{not json", 400, "not valid JSON"),
                                  ({"query": ["plain text"]}, 422, "query 0")]:
            status, body = post(base + "/get_reward", bad)
            assert status == code and needle in body["error"]
        assert post(base + "/elsewhere", {"query": HH})[0] == 404
        assert server.poll() is None  # bad requests do not stop the server
    finally:
        server.terminate()
        server.wait(timeout=30)


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

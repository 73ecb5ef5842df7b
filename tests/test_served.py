"""The OpenAI-compatible server backend, against a small fake server on localhost (real HTTP)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

import cai.backends.served as served
from cai.backends import load_backend
from cai.backends.base import SamplingParams
from cai.backends.served import ServedBackend, option_reading, parse_spec
from cai.errors import ModelError
from http_fakes import FakeServer


@pytest.fixture
def server():
    made = []

    def start(respond):
        made.append(FakeServer(respond))
        return made[-1]

    yield start
    for s in made:
        s.close()


def _chat(text, finish="stop"):
    return 200, {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": finish}],
                 "usage": {"prompt_tokens": 7, "completion_tokens": 3}}


def _top(**probs):
    return 200, {"choices": [{"message": {"content": "x"}, "logprobs": {"content": [{"token": "x", "logprob": 0.0,
        "top_logprobs": [{"token": t, "logprob": math.log(p)} for t, p in probs.items()]}]}}]}


def test_spec_names_the_model_and_the_server(monkeypatch):
    assert parse_spec("openai:Qwen/Qwen2.5-7B-Instruct@http://gpu:8000/v1/") == ("Qwen/Qwen2.5-7B-Instruct",
                                                                                  "http://gpu:8000/v1")
    monkeypatch.setenv("OPENAI_BASE_URL", "https://api.example.org/v1")
    assert parse_spec("openai:m") == ("m", "https://api.example.org/v1")
    monkeypatch.delenv("OPENAI_BASE_URL")
    assert parse_spec("openai:m") == ("m", "http://localhost:8000/v1")
    with pytest.raises(ModelError, match="no model name"):
        parse_spec("openai:@http://x/v1")
    assert isinstance(load_backend("openai:m@http://x/v1", dtype="bf16"), ServedBackend)


def test_generate_keeps_order_forwards_params_and_seeds_per_conversation(server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    def respond(body):
        text = body["messages"][-1]["content"]
        return _chat(f"re: {text}", "length" if text == "long" else "stop")

    s = server(respond)
    backend = ServedBackend.from_spec(f"openai:tiny@{s.url}", concurrency=4)
    convs = [[{"role": "user", "content": f"q{k}"}] for k in range(9)] + [[{"role": "user", "content": "long"}]]
    params = SamplingParams(max_new_tokens=5, temperature=0.7, top_p=0.9, stop=("\n\n",), seed=3)
    out = backend.generate(convs, params)
    assert [c.text for c in out] == [f"re: q{k}" for k in range(9)] + ["re: long"]
    assert out[-1].finish_reason == "length" and out[0].prompt_tokens == 7 and out[0].completion_tokens == 3
    body = next(b for b in s.bodies if b["messages"][-1]["content"] == "q0")
    assert body["model"] == "tiny" and body["max_tokens"] == 5 and body["temperature"] == 0.7
    assert body["top_p"] == 0.9 and body["stop"] == ["\n\n"]
    assert s.headers[0]["Authorization"] == "Bearer sk-test"
    seeds = {b["messages"][-1]["content"]: b["seed"] for b in s.bodies}
    backend.generate(convs[:1], params)
    assert s.bodies[-1]["seed"] == seeds["q0"] != seeds["q1"]  # same prompt and seed, same draw
    backend.generate(convs[:1], SamplingParams(seed=4))
    assert s.bodies[-1]["seed"] != seeds["q0"]
    backend.generate(convs[:1], SamplingParams(do_sample=False, temperature=0.7))
    assert s.bodies[-1]["temperature"] == 0.0  # greedy


def test_option_logprobs_continue_the_answer_prefix_and_merge_spellings(server):
    s = server(lambda body: _top(**{" A": 0.3, "A": 0.1, "(B": 0.2, "C": 0.4}))
    backend = ServedBackend.from_spec(f"openai:j@{s.url}")
    (lp,) = backend.option_logprobs([[{"role": "user", "content": "Which?"}]], "The better response is (", ["A", "B"])
    assert [math.exp(x) for x in lp] == pytest.approx([2 / 3, 1 / 3])
    body = s.bodies[0]
    assert body["messages"][-1] == {"role": "assistant", "content": "The better response is ("}
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False
    assert body["max_tokens"] == 1 and body["logprobs"] is True and body["top_logprobs"] == served.TOP_LOGPROBS


class ByteTokenizer:
    """A stand-in for the model's tokenizer: a plain chat template."""

    def apply_chat_template(self, messages, add_generation_prompt=False, tokenize=False):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + ("<assistant>" * add_generation_prompt)



def test_with_the_model_s_tokenizer_the_prefix_is_rendered_here_and_read_from_completions(server):
    """llama-cpp-python's server ignores continue_final_message; /completions with the prompt rendered here
    continues the prefix on any server."""
    top = {" A": math.log(0.3), "B": math.log(0.1), "x": math.log(0.6)}
    s = server(lambda body: (200, {"choices": [{"text": "x", "logprobs": {"tokens": ["x"], "top_logprobs": [top]}}]}))
    backend = ServedBackend("j", s.url, tokenizer=ByteTokenizer())
    (lp,) = backend.option_logprobs([[{"role": "user", "content": "Which?"}]], "The better response is (", ["A", "B"])
    assert [math.exp(x) for x in lp] == pytest.approx([0.75, 0.25])
    assert s.paths == ["/v1/completions"]
    body = s.bodies[0]
    assert body["prompt"] == "<user>Which?<assistant>The better response is ("
    assert body["max_tokens"] == 1 and body["logprobs"] == served.TOP_LOGPROBS and body["temperature"] == 0.0
    assert served.local_tokenizer("Qwen/Qwen2.5-7B-Instruct") is None  # a Hub id is not looked up


def test_option_outside_the_top_gets_the_floor_and_none_is_an_error():
    top = [{"token": "Yes", "logprob": math.log(0.6)}, {"token": "Maybe", "logprob": math.log(0.05)}]
    assert [math.exp(x) for x in option_reading(top, ["Yes", "No"])] == pytest.approx([0.6 / 0.65, 0.05 / 0.65])
    with pytest.raises(ModelError, match="none of the options"):
        option_reading(top, ["A", "B"])
    with pytest.raises(ModelError, match="no top_logprobs"):
        option_reading([], ["A", "B"])


def test_server_errors_are_retried_or_reported(server, monkeypatch):
    monkeypatch.setattr(served.time, "sleep", lambda s: None)
    calls = []

    def flaky(body):
        calls.append(1)
        return (503, {"error": "busy"}) if len(calls) == 1 else _chat("ok")

    s = server(flaky)
    assert ServedBackend.from_spec(f"openai:m@{s.url}").generate([[{"role": "user", "content": "hi"}]],
                                                                  SamplingParams())[0].text == "ok"
    bad = server(lambda body: (400, {"error": {"message": "model 'm' does not exist"}}))
    with pytest.raises(ModelError, match="HTTP 400.*does not exist"):
        ServedBackend.from_spec(f"openai:m@{bad.url}").generate([[{"role": "user", "content": "hi"}]],
                                                                 SamplingParams())
    port = bad.httpd.server_address[1]
    bad.close()
    with pytest.raises(ModelError, match="cannot reach"):
        ServedBackend.from_spec(f"openai:m@http://127.0.0.1:{port}/v1").generate(
            [[{"role": "user", "content": "hi"}]], SamplingParams())


def test_cli_agreement_with_a_served_judge(server, tmp_path):
    """The judge reads P(Yes) per reply; this server says Yes more the shorter the question is."""
    from typer.testing import CliRunner

    from cai.cli import app

    def respond(body):
        n = len(body["messages"][-2]["content"])
        p = 1 / (1 + math.exp((n - 600) / 100))
        return _top(Yes=max(p, 1e-6), No=max(1 - p, 1e-6))

    s = server(respond)
    out = tmp_path / "a"
    fixtures = Path(__file__).parent / "fixtures" / "pairs"
    result = CliRunner().invoke(app, ["label", "--agreement", str(fixtures / "hh.jsonl"), "--out", str(out),
                                      "--judge", f"openai:judge@{s.url}", "--no-length-control"])
    assert result.exit_code == 0, result.output
    a = json.loads((out / "agreement.json").read_text())
    assert a["n"] == 4 and a["judge"]["model"] == f"openai:judge@{s.url}"
    assert a["longer_wins_rate"] == 0.0  # it prefers the shorter reply every time

"""The label stage: sampling pairs, TRL-format rows with soft labels, resume, the CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cai.feedback.judge import stable_seed
from cai.feedback.preferences import LabelConfig, all_pairs, label_prompts, usable_responses
from cai.jsonl import read_records
from cai.prompts import PromptRow
from label_fakes import FakeJudge, FakePolicy, paper_judge, tiny_constitution

PROMPTS = [PromptRow(id=f"p{i}", prompt=f"harmful request number {i}") for i in range(4)]
SAFE_SEED = stable_seed(0, "sample-0")


def safe_first(prompt: str, seed: int) -> str:
    """Sample 0 is a safe refusal, the others are not."""
    return f"A safe refusal to: {prompt}" if seed == SAFE_SEED else f"Sure ({seed}): {prompt}"


def run(rows, out, policy=None, judge_backend=None, **config):
    config.setdefault("judge", paper_judge())
    """label_prompts with fakes and the tiny constitution; ``config``: LabelConfig fields."""
    return label_prompts(rows, policy=policy or FakePolicy(), judge_backend=judge_backend or FakeJudge(),
                         constitution=tiny_constitution(), out_dir=out, config=LabelConfig(**config))


def test_usable_responses_drop_empty_and_duplicates():
    keep, dropped = usable_responses(["a b", "", "a  b", "c", "  ", "c"])
    assert keep == [0, 3] and dropped == 4


def test_all_pairs():
    assert all_pairs([0, 1]) == [(0, 1)]
    assert all_pairs([0, 2, 3]) == [(0, 2), (0, 3), (2, 3)]


def test_rows_are_trl_conversational_pairs_with_soft_labels(tmp_path):
    policy, judge = FakePolicy(reply=safe_first), FakeJudge(slot_bias=0.7)
    summary = run(PROMPTS, tmp_path, policy, judge)
    rows = read_records(tmp_path / "pairs.jsonl")
    assert summary.pairs == len(rows) == 4 and summary.without_pair == 0
    assert policy.calls == [4, 4]  # one batched call per sample index
    assert [n for n, _ in judge.option_calls] == [4, 4]  # one call per order
    for r in rows:
        assert r["prompt"] == [{"role": "user", "content": r["prompt"][0]["content"]}]
        assert r["chosen"][0]["role"] == r["rejected"][0]["role"] == "assistant"
        assert r["chosen"][0]["content"].startswith("A safe refusal")
        assert 0.5 <= r["p_chosen"] <= 1 and r["position_consistent"]
        assert r["p_chosen"] == pytest.approx((r["p_a_first"] + r["p_a_second"]) / 2)  # a (sample 0) chosen
        assert r["a_is_chosen"] and r["principle_id"] in ("harm", "honest") and r["judge"] == "fake-judge"
        prov = r["provenance"]
        assert prov["stage"] == "label" and prov["model"] == "fake-policy"
        assert prov["judge_model"] == "fake-judge"
        assert prov["constitution"]["name"] == "test" and prov["principle_ids"] == [r["principle_id"]]
        assert prov["sampling"]["temperature"] == 0.7 and prov["seed"] == 0
        assert "judge" in prov["templates"] and prov["judge_config"]["principles"] == "single"
    from cai.records import PreferencePair

    PreferencePair.model_validate(rows[0])


def test_rejected_side_when_the_second_sample_wins(tmp_path):
    judge = FakeJudge(score=lambda t: 0.0 if "safe" in t else 2.0)  # a judge that likes compliance
    run(PROMPTS[:1], tmp_path, FakePolicy(reply=safe_first), judge)
    (r,) = read_records(tmp_path / "pairs.jsonl")
    assert not r["a_is_chosen"] and r["rejected"][0]["content"].startswith("A safe refusal")
    assert r["p_chosen"] == pytest.approx(1 - (r["p_a_first"] + r["p_a_second"]) / 2) and r["p_chosen"] >= 0.5


def test_k3_gives_all_three_pairs(tmp_path):
    run(PROMPTS[:2], tmp_path, samples=3)
    ids = [r["id"] for r in read_records(tmp_path / "pairs.jsonl")]
    assert ids == ["p0/0-1", "p0/0-2", "p0/1-2", "p1/0-1", "p1/0-2", "p1/1-2"]


def test_duplicate_responses_leave_no_pair_and_are_not_retried(tmp_path):
    policy = FakePolicy(reply=lambda prompt, seed: "same answer" if "1" in prompt else f"{seed} {prompt}")
    summary = run(PROMPTS[:3], tmp_path, policy)
    assert summary.pairs == 2 and summary.without_pair == 1 and summary.dropped_responses == 1
    (skipped,) = read_records(tmp_path / "skipped.jsonl")
    assert skipped["prompt_id"] == "p1"
    again = FakePolicy()
    summary = run(PROMPTS[:3], tmp_path, again)
    assert summary.resumed == 3 and again.calls == []


def test_resume_after_partial_output_has_no_duplicates(tmp_path):
    run(PROMPTS[:2], tmp_path, chunk_size=1)
    first = (tmp_path / "pairs.jsonl").read_text()
    with open(tmp_path / "pairs.jsonl", "a") as f:  # a torn row, as kill -9 mid-write could leave
        f.write('{"id": "p2/0-1", "prompt_id": "p2", "prompt": [{"ro')
    policy = FakePolicy()
    summary = run(PROMPTS, tmp_path, policy, chunk_size=1)
    rows = read_records(tmp_path / "pairs.jsonl")
    assert summary.resumed == 2 and policy.calls == [1, 1, 1, 1]  # only p2 and p3 sampled
    assert [r["prompt_id"] for r in rows] == ["p0", "p1", "p2", "p3"]
    assert (tmp_path / "pairs.jsonl").read_text().startswith(first)


def test_a_judge_failure_keeps_the_sampled_responses_for_the_next_run(tmp_path):
    class BrokenJudge(FakeJudge):
        def option_logprobs(self, conversations, prefix, options):
            raise RuntimeError("the judge read NaN")

    policy = FakePolicy()
    with pytest.raises(RuntimeError, match="NaN"):
        run(PROMPTS[:2], tmp_path, policy, BrokenJudge())
    assert policy.calls == [2, 2]  # both samples of both prompts, kept in responses.jsonl
    assert [r["prompt_id"] for r in read_records(tmp_path / "responses.jsonl")] == ["p0", "p1"]
    again = FakePolicy()
    summary = run(PROMPTS[:3], tmp_path, again)
    assert again.calls == [1, 1] and summary.pairs == 3  # only p2 is sampled; every prompt is judged
    changed = FakePolicy()
    run(PROMPTS[:1], tmp_path / "other", changed, max_new_tokens=7)
    assert changed.calls == [1, 1]


def test_same_seed_same_pairs(tmp_path):
    for d in ("a", "b"):
        run(PROMPTS, tmp_path / d, seed=3, judge=paper_judge(principles="ensemble"))
    a, b = (read_records(tmp_path / d / "pairs.jsonl") for d in ("a", "b"))
    for r in a + b:
        del r["provenance"]["created_at"]
    assert a == b


_KILL_SCRIPT = """
import sys, time
sys.path.insert(0, {tests!r})
from label_fakes import FakeJudge, FakePolicy, paper_judge, tiny_constitution
from cai.feedback.preferences import LabelConfig, label_prompts
from cai.prompts import PromptRow

class Slow(FakePolicy):
    def generate(self, conversations, params, *, desc=""):
        time.sleep(0.15)
        return super().generate(conversations, params, desc=desc)

rows = [PromptRow(id=f"p{{i}}", prompt=f"request {{i}}") for i in range(12)]
label_prompts(rows, policy=Slow(), judge_backend=FakeJudge(), constitution=tiny_constitution(),
              out_dir={out!r}, config=LabelConfig(chunk_size=1, judge=paper_judge()))
"""


def test_kill_9_then_resume_writes_each_prompt_once(tmp_path):
    out = tmp_path / "run"
    script = _KILL_SCRIPT.format(tests=str(Path(__file__).parent), out=str(out))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 30
    while time.time() < deadline:
        path = out / "pairs.jsonl"
        if path.exists() and len(path.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(read_records(out / "pairs.jsonl"))
    assert 2 <= done_before < 12
    rows = [PromptRow(id=f"p{i}", prompt=f"request {i}") for i in range(12)]
    summary = run(rows, out, chunk_size=1)
    ids = [r["prompt_id"] for r in read_records(out / "pairs.jsonl")]
    assert sorted(ids) == sorted(f"p{i}" for i in range(12)) and summary.resumed == done_before


# ---- the CLI -----------------------------------------------------------------------------------------


def test_cli_label_loads_one_model_for_both_roles_and_writes_pairs(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import cai.cli.label as label_cli
    from cai.cli import app

    class Both(FakeJudge):
        def __init__(self):
            super().__init__(model_id="smollm2-135m")
            self.policy = FakePolicy(reply=safe_first)

        def generate(self, conversations, params, *, desc=""):
            return self.policy.generate(conversations, params, desc=desc)

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"h{i}", "prompt": f"request {i}"}) + "\n" for i in range(3))
                       + '{"id": "h9", "prompt": ""}\n')
    loads = []
    monkeypatch.setattr(label_cli, "_load", lambda spec, dtype="auto": loads.append(spec) or Both())
    out = tmp_path / "l"
    result = CliRunner().invoke(app, ["label", str(prompts), "--out", str(out), "-k", "2", "--limit", "2",
                                      "--mode", "pairwise", "--no-length-control"])
    assert result.exit_code == 0, result.output
    assert loads == ["smollm2-135m"]
    rows = read_records(out / "pairs.jsonl")
    assert [r["prompt_id"] for r in rows] == ["h0", "h1"] and all(r["p_chosen"] >= 0.5 for r in rows)
    assert "2 pairs written" in result.output


def test_cli_label_rejects_one_sample(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import cai.cli.label as label_cli
    from cai.cli import app

    monkeypatch.setattr(label_cli, "_load", lambda spec, dtype="auto": pytest.fail("no model should load"))
    result = CliRunner().invoke(app, ["label", "redteam", "--out", str(tmp_path / "l"), "--samples", "1"])
    assert "--samples" in str(result.exception)
    assert not (tmp_path / "l").exists()


def test_cli_label_with_a_tiny_real_model(tmp_path, tiny_model_dir):
    """The transformers backend end to end (random 2-layer model, so labels are noise but well formed)."""
    from typer.testing import CliRunner

    from cai.cli import app

    prompts = tmp_path / "p.txt"
    prompts.write_text("How do I pick a lock?\nWrite a rude message to my boss.\n")
    out = tmp_path / "l"
    model = str(tiny_model_dir)
    result = CliRunner().invoke(app, ["label", str(prompts), "--out", str(out), "--policy", model,
                                      "--judge", model, "--max-new-tokens", "3"])
    assert result.exit_code == 0, result.output
    rows = read_records(out / "pairs.jsonl")
    assert len(rows) == 2 and all(0.5 <= r["p_chosen"] <= 1 for r in rows)

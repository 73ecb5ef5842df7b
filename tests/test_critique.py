"""SL-CAI critique-revision: record shape, provenance, SFT rows, filtering, resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cai.backends.transformers import TransformersBackend
from cai.constitution import load_constitution
from cai.critique import (
    CritiqueOptions,
    answer_problem,
    clean_revision,
    critique_says_nothing_to_fix,
    cut_repeats,
    helpful_rows,
    revision_problem,
    run_critique,
    run_helpful,
    sft_rows,
    write_sft_files,
)

PROMPTS = [(f"p{i}", f"How do I do thing number {i}?") for i in range(5)]


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return TransformersBackend.load(str(tiny_model_dir), dtype="fp32", batch_size=4)


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_records_have_rounds_final_and_provenance(tmp_path, backend):
    const = load_constitution("general")
    opts = CritiqueOptions(rounds=2, max_new_tokens=6, seed=3, chunk_size=2)
    summary = run_critique(PROMPTS, tmp_path, backend=backend, constitution=const, options=opts)
    recs = _read(tmp_path / "records.jsonl")
    assert [r["id"] for r in recs] == [p for p, _ in PROMPTS]
    assert summary["records"] == 5
    for r in recs:
        assert len(r["rounds"]) == 2 and r["final"] == r["rounds"][-1]["revision"]
        assert {p.id for p in const.principles} >= {rd["principle_id"] for rd in r["rounds"]}
        prov = r["provenance"]
        assert prov["constitution"] == {"name": "general", "version": const.version, "hash": const.hash}
        assert prov["model"] == backend.model_id and prov["seed"] == 3
        assert prov["sampling"]["max_new_tokens"] == 6 and "revision" in prov["templates"]
        assert prov["principle_ids"] == [rd["principle_id"] for rd in r["rounds"]]
        assert r["token_counts"]["completion"] > 0
    sft = _read(tmp_path / "sft.jsonl")
    usable = [r for r in recs if any(revision_problem(r["initial"], rd["critique"], rd["revision"]) is None
                                     for rd in r["rounds"])]
    assert all(r["usable"] == (r in usable) and (r["problem"] is None) == r["usable"] for r in recs)
    assert len(sft) == len(usable) == summary["sft_usable"]  # only usable rows; records.jsonl keeps all
    assert all(s["usable"] and s["messages"][-1]["role"] == "assistant" for s in sft)
    pc = _read(tmp_path / "sft_prompt_completion.jsonl")
    assert all(row["prompt"][-1]["role"] == "user" and row["completion"][0]["role"] == "assistant" for row in pc)


def test_same_seed_same_principles_regardless_of_chunking(tmp_path, backend):
    const = load_constitution("general")
    a, b = tmp_path / "a", tmp_path / "b"
    run_critique(PROMPTS, a, backend=backend, constitution=const,
                 options=CritiqueOptions(rounds=2, max_new_tokens=3, chunk_size=5))
    run_critique(PROMPTS, b, backend=backend, constitution=const,
                 options=CritiqueOptions(rounds=2, max_new_tokens=3, chunk_size=1))
    pa = [[rd["principle_id"] for rd in r["rounds"]] for r in _read(a / "records.jsonl")]
    pb = [[rd["principle_id"] for rd in r["rounds"]] for r in _read(b / "records.jsonl")]
    assert pa == pb


def test_resume_skips_done_prompts_and_repairs_a_torn_line(tmp_path, backend):
    const = load_constitution("seed")
    opts = CritiqueOptions(rounds=1, max_new_tokens=3, chunk_size=2)
    run_critique(PROMPTS[:2], tmp_path, backend=backend, constitution=const, options=opts)
    with open(tmp_path / "records.jsonl", "a") as f:
        f.write('{"id": "p2", "prompt": "half a rec')  # what kill -9 mid-write can leave
    run_critique(PROMPTS, tmp_path, backend=backend, constitution=const, options=opts)
    ids = [r["id"] for r in _read(tmp_path / "records.jsonl")]
    assert sorted(ids) == sorted(p for p, _ in PROMPTS) and len(ids) == len(set(ids))


def test_revision_filters():
    assert revision_problem("x", "crit", "") == "empty"
    crit = "Your response is harmful because it explains how to pick a lock on a door you do not own"
    assert revision_problem("x", crit, crit) == "echoes the critique"
    assert revision_problem("x", "c", "The response is harmful because it helps.") is not None
    assert revision_problem("x", "c", " ".join(["go to the shop"] * 10)) == "repeats itself"
    assert revision_problem("x", "c", "I can't help with that, but a locksmith can open your own door.") is None
    assert clean_revision("Revised response: Sure, here it is.") == "Sure, here it is."
    assert critique_says_nothing_to_fix("There is nothing to fix in this answer.")
    assert not critique_says_nothing_to_fix("The answer explains how to hurt someone.")


def test_unchanged_revisions_and_loops_are_caught():
    answer = "Sure, first you take the tools and then you open the door."
    assert revision_problem(answer, "", "Sure,  first you take the tools and then you open the door.") == "unchanged"
    looped = "I'm sorry, but I can't help with that. I'm not able to help.\n\nI'm sorry, but I can't help with that."
    assert cut_repeats(looped) == "I'm sorry, but I can't help with that. I'm not able to help."
    assert clean_revision("Revision: " + looped) == "I'm sorry, but I can't help with that. I'm not able to help."
    assert cut_repeats("One. Two! Three?") == "One. Two! Three?"


def test_helpful_answers_that_refuse_or_loop_are_left_out():
    assert answer_problem("Preheat the oven to 200 C and roast the vegetables for 30 minutes.") is None
    assert answer_problem("I'm sorry, but I can't help with that.") == "refuses a harmless request"
    assert answer_problem(" ".join(["a snowflake's beauty,"] * 12)) == "repeats itself"
    assert answer_problem("") == "empty"


def test_critique_free_revision_and_helpful_answers_make_the_sft_data(tmp_path, backend):
    const = load_constitution("general")
    opts = CritiqueOptions(rounds=1, max_new_tokens=6, critique_step=False, temperature=0.0)
    assert run_helpful([("h1", "How do I bake bread?"), ("h2", "Name a prime.")], tmp_path, backend=backend,
                       constitution=const, options=opts) == 2
    assert run_helpful([("h1", "How do I bake bread?")], tmp_path, backend=backend, constitution=const,
                       options=opts) == 0  # resumed: nothing to do
    summary = run_critique(PROMPTS[:2], tmp_path, backend=backend, constitution=const, options=opts)
    recs = _read(tmp_path / "records.jsonl")
    assert all(r["rounds"][0]["critique"] == "" for r in recs)  # no critique turn was asked for
    assert summary["records"] == 2 and summary["helpful_records"] == 2
    sft = _read(tmp_path / "sft.jsonl")  # the usable rows only, red-team records first, then helpful answers
    helpful_recs = _read(tmp_path / "helpful.jsonl")
    rows = [sft_rows(r)[0] for r in recs] + [helpful_rows(h)[0] for h in helpful_recs]
    assert [r["id"] for r in sft] == [r["id"] for r in rows if r["usable"]]
    assert [r["id"] for r in rows] == ["p0", "p1", "h1", "h2"]
    usable_answers = [h["answer"] for h, r in zip(helpful_recs, rows[2:], strict=True) if r["usable"]]
    assert [r["messages"][-1]["content"] for r in sft if r.get("kind") == "helpful"] == usable_answers
    assert write_sft_files(tmp_path)["sft_usable"] == len(sft)


def test_sft_rows_mark_unusable_records():
    rec = {"id": "a", "prompt": "p", "initial": "i", "final": "same", "provenance": {"constitution": None},
           "rounds": [{"critique": "c", "revision": ""}]}
    messages, pc = sft_rows(rec)
    assert messages["usable"] is False and messages["problem"] == "empty"
    rec["rounds"].append({"critique": "c", "revision": "A fine, safe answer to the question."})
    messages, pc = sft_rows(rec)
    assert messages["usable"] and messages["messages"][-1]["content"].startswith("A fine")


def _cai(*args: str) -> list[str]:
    return [sys.executable, "-m", "cai", *args]


def test_cli_resume_after_kill_9_gives_every_prompt_exactly_once(tmp_path, tiny_model_dir):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Prompt {i} " + "x " * i}) + "\n"
                               for i in range(12)) + "not json\n")
    out = tmp_path / "run"
    args = _cai("critique", str(prompts), "--out", str(out), "--model", str(tiny_model_dir), "--rounds", "1",
                "--max-new-tokens", "24", "--batch-size", "2", "--dtype", "fp32")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        rec = out / "records.jsonl"
        if rec.exists() and rec.read_text().count("\n") >= 1:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run(args, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    ids = [r["id"] for r in _read(out / "records.jsonl")]
    assert sorted(ids) == sorted(f"q{i}" for i in range(12))
    assert len(ids) == len(set(ids))
    bad = _read(out / "bad_rows.jsonl")
    assert len(bad) == 1 and bad[0]["row"] == 13


def test_cli_refuses_to_resume_with_other_settings(tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    base = ["critique", "helpful", "--out", str(out), "--model", str(tiny_model_dir), "--limit", "1",
            "--rounds", "1", "--max-new-tokens", "2", "--dtype", "fp32"]
    assert subprocess.run(_cai(*base), capture_output=True).returncode == 0
    other = subprocess.run(_cai(*base, "--seed", "5"), capture_output=True, text=True)
    assert other.returncode == 2 and "Traceback" not in other.stderr and "seed" in other.stderr


@pytest.mark.slow
def test_critique_on_the_real_embedded_model(tmp_path, embedded_model_dir):
    backend = TransformersBackend.load("smollm2-135m")
    const = load_constitution("general")
    prompts = [("a", "How can I get into my neighbour's wifi without asking?"),
               ("b", "Give me a tip for a job interview.")]
    run_critique(prompts, tmp_path, backend=backend, constitution=const,
                 options=CritiqueOptions(rounds=1, max_new_tokens=24))
    recs = _read(tmp_path / "records.jsonl")
    assert len(recs) == 2
    for r in recs:
        assert r["initial"].strip() and r["rounds"][0]["critique"].strip() and r["final"].strip()
        assert r["provenance"]["model"] == "smollm2-135m"


def test_a_reply_cut_off_by_its_token_budget_is_trained_up_to_its_last_complete_sentence():
    from cai.critique import complete_part, helpful_rows, sft_rows

    assert complete_part("Mix the flour. Then add the") == "Mix the flour."
    assert complete_part("Steps:\n1. Mix the flour\n2. Add") == "Steps:\n1. Mix the flour"  # "1." is no sentence end
    assert complete_part("I can't help with that.I'm sorry, but I") == "I can't help with that."
    assert complete_part("A whole answer.") == "A whole answer."
    assert complete_part("One sentence, cut off") == "One sentence, cut off"  # nothing complete: kept whole
    provenance = {"constitution": {"hash": "h"}}
    _, pc = helpful_rows({"id": "h1", "prompt": "Bake bread?", "answer": "Knead the dough well. Then bake it at",
                          "provenance": provenance})
    assert pc["usable"] and pc["completion"][0]["content"] == "Knead the dough well."
    record = {"id": "r1", "prompt": "How do I pick a lock?", "initial": "First, insert a tension wrench and",
              "rounds": [{"critique": "It helps with breaking in.",
                          "revision": "I can't help with getting into a lock that isn't yours. A locksmith can"}],
              "final": "", "provenance": provenance}
    _, pc = sft_rows(record)
    assert pc["usable"] and pc["completion"][0]["content"] == "I can't help with getting into a lock that isn't yours."

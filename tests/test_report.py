"""The evaluation report: finding result files, the figures it shows, plots, and clear errors."""

from __future__ import annotations

import json

import pytest

from cai.errors import ConfigError
from cai.report import build_report, collect


def _write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data) if not isinstance(data, list) else "".join(json.dumps(r) + "\n" for r in data))


def _run_dir(root):
    _write(root / "ref" / "refusals.json", {"models": [
        {"model": "base", "model_spec": "smollm2-135m", "sets": {"harmful": {"n": 10, "refusal_rate": 0.1},
                                                                "safe": {"n": 10, "refusal_rate": 0.0}}},
        {"model": "tuned", "model_spec": "runs/ppo/policy", "sets": {"harmful": {"n": 10, "refusal_rate": 0.7},
                                                                   "safe": {"n": 10, "refusal_rate": 0.2}}}]})
    _write(root / "rt" / "redteam.json", {"models": {"smollm2-135m": {
        "overall": {"n": 5, "asr": 0.75, "degenerate": 1},
        "templates": {"direct": {"n": 2, "asr": 0.5, "lift": 0.0},
                      "override": {"n": 3, "asr": 1.0, "lift": 0.5, "degenerate": 1}}}}})
    _write(root / "ppo" / "metrics.jsonl", [{"step": 1, "reward": -0.5, "kl": 0.0},
                                            {"step": 2, "reward": 0.25, "kl": 1.5}])
    _write(root / "reward" / "metrics.json", {"eval_accuracy": 0.625, "n_eval": 8, "n_train": 72})
    _write(root / "agree" / "agreement.json", {"n": 20, "agreement": 0.55, "position_consistency": 0.4,
                                               "longer_wins_rate": 0.6, "judge": {"model": "j"},
                                               "per_principle": {"harm": {"n": 12, "agreement": 0.75},
                                                                 "help": {"n": 8, "agreement": 0.25}}})
    _write(root / "sft" / "metrics.jsonl", [{"loss": 1.0}])  # not PPO metrics: ignored
    _write(root / "notes" / "metrics.json", {"loss": 1.0})  # not a reward model's: ignored


def test_collect_finds_each_kind_and_ignores_other_metrics(tmp_path):
    _run_dir(tmp_path)
    found = collect([tmp_path])
    assert {k: len(v) for k, v in found.items() if v} == {"refusals": 1, "redteam": 1, "ppo": 1, "reward": 1,
                                                          "agreement": 1}


def test_report_shows_the_figures_and_draws_the_plots(tmp_path):
    _run_dir(tmp_path / "runs")
    figures = build_report([tmp_path / "runs"], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| runs/ppo/policy | 0.700 | 0.200 | 10 | 10 |" in md  # harmful refused, safe refused
    assert "| override | 1.000 |" in md and "| all | 0.750 |" in md
    assert "| 2 | -0.500 | 0.250 | 1.500 | 1.500 |" in md  # steps, first/last reward, last/max KL
    assert "0.625" in md and "position consistency 0.400" in md
    assert md.index("| harm | 12 | 0.750 |") < md.index("| help | 8 | 0.250 |")  # best-applied principle first
    assert set(figures["plots"]) == {"tradeoff", "jailbreaks", "ppo"}
    for name in figures["plots"].values():
        assert (tmp_path / "report" / name).read_bytes()[:4] == b"\x89PNG" and f"]({name})" in md
    saved = json.loads((tmp_path / "report" / "report.json").read_text())
    assert saved["tradeoff"][1] == {"model": "runs/ppo/policy", "source": str(tmp_path / "runs/ref/refusals.json"),
                                    "harmful_refusal": 0.7, "safe_refusal": 0.2, "n_harmful": 10, "n_safe": 10,
                                    "harmful_refusal_train": None, "safe_refusal_train": None,
                                    "harmful_set": None, "safe_set": None}
    assert "The refusal check (a keyword check) on" in md and "precision" in md
    assert saved["ppo"][0]["reward_last"] == 0.25


def test_nothing_to_report_and_broken_files_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="found no result file"):
        collect([tmp_path / "empty"])
    with pytest.raises(ConfigError, match="no such file"):
        collect([tmp_path / "missing"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "refusals.json").write_text("{torn")
    with pytest.raises(ConfigError) as e:
        collect([tmp_path / "bad"])
    assert e.value.where.endswith("refusals.json")


def test_cli_writes_the_report(tmp_path):
    from typer.testing import CliRunner

    from cai.cli import app

    _run_dir(tmp_path / "runs")
    result = CliRunner().invoke(app, ["report", str(tmp_path / "runs" / "rt"), str(tmp_path / "runs" / "ppo"),
                                      "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    assert "1 redteam, 1 ppo" in result.output and (tmp_path / "r" / "report.md").exists()


def test_label_summaries_and_dpo_runs_are_reported_and_small_held_out_sets_get_a_caveat(tmp_path):
    pair = {"id": "p/0-1", "prompt": [], "chosen": [], "rejected": [], "judge": "j", "prompt_id": "p",
            "provenance": {"model": "pol"}}
    _write(tmp_path / "l" / "pairs.jsonl", [{**pair, "p_chosen": 0.75, "position_consistent": True},
                                            {**pair, "prompt_id": "q", "p_chosen": 0.55, "position_consistent": False}])
    _write(tmp_path / "probe" / "pairs.jsonl", [{"prompt": "x", "chosen": "a", "rejected": "b"}])  # human-style
    _write(tmp_path / "dpo" / "cai_model.json", {"stage": "dpo", "metrics": {"pairs_used": 6, "pairs_seen": 6,
                                                                             "steps": 3, "final_loss": 0.69}})
    _write(tmp_path / "sft" / "cai_model.json", {"stage": "sft", "metrics": {}})  # not reported
    _write(tmp_path / "rm" / "metrics.json", {"eval_accuracy": 0.0, "n_eval": 1, "n_train": 3})
    build_report([tmp_path], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "| 2 | 2 | 0.650 | 0.500 | j |" in md  # pairs, prompts, mean p_chosen, consistency, judge
    assert "| 6 | 6 | 3 | 0.690 |" in md and md.count("cai_model.json") == 1
    assert "| 0.000 | 1 | 3 |" in md and "fewer than 30 pairs (here 1)" in md


def test_pairs_built_without_a_judge_have_no_position_consistency_and_name_both_sources(tmp_path):
    from cai.feedback.constructed import HELPFUL_SOURCE, SOURCE
    from cai.report.results import label_summary

    pair = {"id": "p", "prompt": [], "chosen": [], "rejected": [], "prompt_id": "p", "p_chosen": 0.9,
            "position_consistent": True, "provenance": {"model": "pol"}}
    _write(tmp_path / "pairs.jsonl", [{**pair, "judge": SOURCE}, {**pair, "judge": HELPFUL_SOURCE}])
    summary = label_summary(tmp_path / "pairs.jsonl")
    assert summary["position_consistency"] is None  # no judge read them in two orders
    assert summary["judge"] == f"{SOURCE}; {HELPFUL_SOURCE}"


def test_tradeoff_points_that_coincide_share_a_label_and_runs_tell_a_model_apart():
    from cai.report.plots import _points

    rows = [{"model": "smollm2-135m", "source": "/r/a/evaluate/refusals.json", "safe_refusal": 0.1,
             "harmful_refusal": 0.2},
            {"model": "smollm2-135m", "source": "/r/b/evaluate/refusals.json", "safe_refusal": 0.1,
             "harmful_refusal": 0.2},
            {"model": "/r/b/sft", "source": "/r/b/evaluate/refusals.json", "safe_refusal": 0.3,
             "harmful_refusal": 0.5}]
    assert _points(rows) == {(0.1, 0.2): ["smollm2-135m (a/evaluate)", "smollm2-135m (b/evaluate)"],
                             (0.3, 0.5): ["sft"]}


@pytest.mark.parametrize(("label_source", "shown"), [
    ("constructed", "constructed pairs from the critique and helpful sets (no judge)"),
    ("judge", "mixed:train"),
])
def test_trained_on_names_the_label_source_the_run_used(tmp_path, label_source, shown):
    import yaml

    from cai.report.results import trained_on

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.resolved.yaml").write_text(yaml.safe_dump({
        "stages": ["critique", "sft", "label", "dpo"], "sft": {"helpful_weight": 2},
        "critique_prompts": {"source": "redteam", "split": "train"},
        "helpful_prompts": {"source": "helpful", "split": "train"},
        "rl_prompts": {"source": "mixed", "split": "train"}}))
    _write(run / "preferences" / "label_source.json", {"label_source": label_source, "label_source_why": "probes"})
    sets = trained_on(collect([tmp_path], required=False))[0]["sets"]
    assert sets["critique (SL-CAI)"] == "redteam:train"
    assert sets["helpful answers mixed into SFT"] == "helpful:train, weighted 2"
    assert sets["label / RL"] == shown


def _tables(md: str, html: str) -> tuple[list[int], list[int]]:
    """Rows per table in report.md and in report.html, in order."""
    from itertools import groupby

    md_tables = [len(list(lines)) - 2 for is_table, lines in groupby(md.splitlines(), lambda x: x.startswith("|"))
                 if is_table]
    return md_tables, [t.count("<tr>") - 1 for t in html.split("<table>")[1:]]


def test_markdown_and_html_show_the_same_tables_and_rows(tmp_path):
    """Both reports render one list of blocks: the jailbreak table's degenerate-replies row, once in the
    Markdown only, is in the page too, and so is every other row."""
    _run_dir(tmp_path / "runs")
    build_report([tmp_path / "runs"], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    html = (tmp_path / "report" / "report.html").read_text()
    assert "| degenerate replies | 1 |" in md and "<tr><td>degenerate replies</td><td>1</td></tr>" in html
    md_rows, html_rows = _tables(md, html)
    assert md_rows == html_rows and len(md_rows) >= 5


def test_each_runs_training_sets_are_in_a_titled_runs_table_not_above_an_unrelated_one(tmp_path):
    import yaml

    _run_dir(tmp_path / "runs")
    for name in ("general", "redteam"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.resolved.yaml").write_text(yaml.safe_dump({
            "model": "smollm2-135m", "constitution": name, "stages": ["critique", "sft"],
            "critique_prompts": {"source": "redteam", "split": "train"},
            "helpful_prompts": {"source": "helpful", "split": "train"}}))
    build_report([tmp_path / "runs", tmp_path / "general", tmp_path / "redteam"], tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    runs = md.index("## Training runs")
    assert "Trained on" not in md
    assert f"| {tmp_path / 'general'} | smollm2-135m | general | redteam:train | helpful:train | - |" in md
    assert runs < md.index(f"| {tmp_path / 'redteam'} | smollm2-135m | redteam |") < md.index("## Harmlessness")
    assert "Measured on" not in md  # the refusal file names no prompt sets: no "None" line

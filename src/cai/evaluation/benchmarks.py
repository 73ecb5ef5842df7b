"""Safety benchmarks by name, each scored in its own standard metric with a bootstrap interval.

    cai eval --benchmark xstest --data xstest_prompts.csv --grader keyword --out runs/xstest

Each benchmark is read from its Hugging Face id or canonical URL (users online), or from a local file in the
benchmark's own format (``--data``, checked column by column). Every model answers every prompt (greedy,
seeded), a grader (``cai.evaluation.graders``) reads each reply, and the figures go to ``DIR/eval.json`` with
the grader's measured agreement beside them:

* HarmBench (standard behaviours), AdvBench, SimpleSafetyTests, JailbreakBench harmful: attack success rate,
  the share of replies the grader finds harmful (HarmBench's own metric; its classifier is the ``harmbench``
  grader). With the keyword grader "harmful" means "did not refuse", an upper bound.
* JailbreakBench benign: the refusal rate (over-refusal).
* StrongREJECT: the mean StrongREJECT score (the ``strongreject`` grader's rubric; another grader's 0/1
  harm score gives a cruder figure, named as such).
* XSTest: the refusal rate (full or partial) on the safe prompts, lower is better, beside the refusal rate on
  the unsafe contrast prompts, higher is better.

Empty, garbled or looping replies (``cai.evaluation.replies``) and grader outputs that cannot be read are left
out of the figures and counted.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cai.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Item:
    """One benchmark prompt: ``set`` is "harmful" (should be refused) or "safe" (should be answered)."""

    id: str
    prompt: str
    set: str
    category: str = ""


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    sources: dict[str, str]  # set name -> Hub id ("hf:ID:SPLIT") or canonical URL
    columns: tuple[str, ...]  # columns a local file must have
    items: Callable[[list[dict[str, str]], str], list[Item]]  # (rows, set of the file) -> items
    metrics: tuple[str, ...]  # figure keys, see METRICS
    recommended_grader: str
    notes: str = ""
    alternatives: dict[str, tuple[str, ...]] = field(default_factory=dict)  # column -> other accepted names


def _col(row: dict[str, str], name: str, alternatives: Sequence[str] = ()) -> str:
    for key in (name, *alternatives):
        if key in row and row[key] is not None:
            return row[key].strip()
    return ""


def _harmbench(rows, _set):
    # standard behaviours only: contextual ones need their context string, copyright ones a hashing classifier
    return [Item(_col(r, "BehaviorID") or str(i), _col(r, "Behavior"), "harmful", _col(r, "SemanticCategory"))
            for i, r in enumerate(rows) if _col(r, "FunctionalCategory") == "standard"]


def _jailbreakbench(rows, set_name):
    return [Item(f"{set_name}-{_col(r, 'Index') or i}", _col(r, "Goal"), set_name, _col(r, "Category"))
            for i, r in enumerate(rows)]


def _strongreject(rows, _set):
    return [Item(str(i), _col(r, "forbidden_prompt"), "harmful", _col(r, "category")) for i, r in enumerate(rows)]


def _xstest(rows, _set):
    items = []
    for i, r in enumerate(rows):
        label = _col(r, "label").lower()
        items.append(Item(_col(r, "id") or str(i), _col(r, "prompt"), "safe" if label == "safe" else "harmful",
                          _col(r, "type")))
    return items


def _simplesafetytests(rows, _set):
    return [Item(_col(r, "id") or str(i), _col(r, "prompt", ("prompts_final",)), "harmful", _col(r, "harm_area"))
            for i, r in enumerate(rows)]


def _advbench(rows, _set):
    return [Item(str(i), _col(r, "goal"), "harmful") for i, r in enumerate(rows)]


BenchmarkName = Literal["harmbench", "jailbreakbench", "strongreject", "xstest", "simplesafetytests", "advbench"]
BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (
    Benchmark("harmbench", "HarmBench (standard behaviours)",
              {"harmful": "https://raw.githubusercontent.com/centerforaisafety/HarmBench/main/data/behavior_datasets/"
                          "harmbench_behaviors_text_all.csv"},
              ("Behavior", "FunctionalCategory", "SemanticCategory", "BehaviorID"), _harmbench, ("asr",),
              "harmbench"),
    Benchmark("jailbreakbench", "JailbreakBench (JBB-Behaviors)",
              {"harmful": "https://huggingface.co/datasets/JailbreakBench/JBB-Behaviors/resolve/main/data/"
                          "harmful-behaviors.csv",
               "safe": "https://huggingface.co/datasets/JailbreakBench/JBB-Behaviors/resolve/main/data/"
                       "benign-behaviors.csv"},
              ("Goal", "Target", "Behavior", "Category", "Source"), _jailbreakbench, ("asr", "benign_refusal"),
              "harmbench", "a local --data is a directory with harmful-behaviors.csv and benign-behaviors.csv, or "
                           "one of them (a file named *benign* is the benign set)"),
    Benchmark("strongreject", "StrongREJECT",
              {"harmful": "https://raw.githubusercontent.com/alexandrasouly/strongreject/main/strongreject_dataset/"
                          "strongreject_dataset.csv"},
              ("category", "source", "forbidden_prompt"), _strongreject, ("strongreject", "asr"), "strongreject"),
    Benchmark("xstest", "XSTest", {"both": "https://raw.githubusercontent.com/paul-rottger/xstest/main/"
                                           "xstest_prompts.csv"},
              ("id", "prompt", "type", "label", "focus", "note"), _xstest, ("safe_refusal", "unsafe_refusal"),
              "xstest"),
    Benchmark("simplesafetytests", "SimpleSafetyTests", {"harmful": "hf:Bertievidgen/SimpleSafetyTests:test"},
              ("id", "harm_area", "category", "prompt"), _simplesafetytests, ("asr",), "llama-guard",
              alternatives={"prompt": ("prompts_final",)}),
    Benchmark("advbench", "AdvBench (harmful behaviours)",
              {"harmful": "https://raw.githubusercontent.com/llm-attacks/llm-attacks/main/data/advbench/"
                          "harmful_behaviors.csv"},
              ("goal", "target"), _advbench, ("asr",), "harmbench"),
)}

METRICS = {  # key -> (label, set it is measured on, what each reply contributes, higher is better)
    "asr": ("attack success rate", "harmful", "harmful", False),
    "benign_refusal": ("refusal rate on benign prompts", "safe", "refused", False),
    "strongreject": ("StrongREJECT score", "harmful", "score", False),
    "safe_refusal": ("refusal rate on safe prompts (full or partial)", "safe", "refused", False),
    "unsafe_refusal": ("refusal rate on unsafe prompts", "harmful", "refused", True),
}


def benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        from cai.models import did_you_mean_among

        guess = did_you_mean_among(name, BENCHMARKS)
        raise ConfigError(f"unknown benchmark {name!r}" + (f" (did you mean {guess!r}?)" if guess else ""),
                          fix=f"use one of: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


# ---- reading -----------------------------------------------------------------------------------------------------


def read_table(text: str, where: str, suffix: str) -> list[dict[str, str]]:
    """Rows of a CSV (``suffix`` .csv) or JSON-lines file, as dicts of strings."""
    if suffix in (".jsonl", ".json"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as e:
                raise ConfigError(f"not JSON ({e})", where=f"{where}:{n}", fix="one JSON object per line") from None
            if not isinstance(row, dict):
                raise ConfigError("a line is not a JSON object", where=f"{where}:{n}", fix="one object per line")
            rows.append({k: "" if v is None else str(v) for k, v in row.items()})
        return rows
    return list(csv.DictReader(io.StringIO(text)))


def check_rows(bench: Benchmark, rows: list[dict[str, str]], where: str) -> None:
    """The columns and prompts a local file must have, with the file and line of the first problem."""
    if not rows:
        raise ConfigError("no rows", where=where, fix=f"give a {bench.title} file with the columns "
                                                       f"{', '.join(bench.columns)}")
    missing = [c for c in bench.columns if c not in rows[0] and not any(a in rows[0] for a in
                                                                      bench.alternatives.get(c, ()))]
    if missing:
        raise ConfigError(f"missing column(s) {', '.join(missing)} (found: {', '.join(rows[0])})", where=where,
                          fix=f"{bench.title} files have the columns {', '.join(bench.columns)}")


def _fetch(source: str) -> tuple[list[dict[str, str]], str]:
    """Rows from a Hub id (``hf:ID:SPLIT``, through ``datasets``) or a URL; a clear error when offline."""
    how = "give --data PATH, a local file in the benchmark's format"
    if source.startswith("hf:"):
        _, repo, split = source.split(":")
        try:
            from datasets import load_dataset

            data = load_dataset(repo, split=split)
        except Exception as e:  # offline, gated, renamed: all say the same to the user
            raise ConfigError(f"cannot load {repo} from the Hugging Face Hub ({type(e).__name__}: {e})",
                              fix=how) from None
        return [{k: "" if v is None else str(v) for k, v in row.items()} for row in data], repo
    import urllib.request

    try:
        with urllib.request.urlopen(source, timeout=60) as response:  # noqa: S310 (a fixed https URL)
            text = response.read().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"cannot download {source} ({e})", fix=how) from None
    return read_table(text, source, ".csv"), source


def _local_files(bench: Benchmark, path: Path) -> dict[str, Path]:
    """The local file(s) for each set of ``bench``: a file, or (JailbreakBench) a directory of its two files."""
    if not path.exists():
        raise ConfigError("no such file or directory", where=str(path), fix="check the --data path")
    if len(bench.sources) == 1:
        if path.is_dir():
            raise ConfigError("a directory, not a file", where=str(path), fix=f"give the {bench.title} file")
        return {next(iter(bench.sources)): path}
    if path.is_file():
        return {"safe" if "benign" in path.name.lower() else "harmful": path}
    files = {s: path / Path(url).name for s, url in bench.sources.items()}
    found = {s: f for s, f in files.items() if f.is_file()}
    if not found:
        raise ConfigError(f"neither {' nor '.join(f.name for f in files.values())} is here", where=str(path),
                          fix="put the benchmark's files in this directory, or give one of them")
    return found


def load_items(name: str, data: str | Path | None = None, *, limit: int | None = None) -> tuple[list[Item], str]:
    """A benchmark's prompts (the first ``limit`` of each set) and where they came from: ``data`` (a local file in
    the benchmark's format) or, without it, the benchmark's Hub id / URL."""
    bench = benchmark(name)
    items: list[Item] = []
    sources = []
    if data is not None:
        for set_name, path in _local_files(bench, Path(data)).items():
            rows = read_table(path.read_text(encoding="utf-8"), str(path), path.suffix.lower())
            check_rows(bench, rows, str(path))
            items += _checked(bench.items(rows, set_name), str(path))
            sources.append(str(path))
    else:
        for set_name, source in bench.sources.items():
            rows, where = _fetch(source)
            check_rows(bench, rows, where)
            items += _checked(bench.items(rows, set_name), where)
            sources.append(where)
    if limit is not None:
        items = first_of_each_set(items, limit)
    if not items:
        raise ConfigError(f"no {bench.title} prompts to run", where=", ".join(sources),
                          fix="check the file (HarmBench: only FunctionalCategory=standard rows are used)")
    return items, ", ".join(sources)


def first_of_each_set(items: Sequence[Item], limit: int) -> list[Item]:
    """The first ``limit`` items of each set, in their order."""
    kept: dict[str, int] = {}
    out = []
    for item in items:
        if kept.get(item.set, 0) < limit:
            kept[item.set] = kept.get(item.set, 0) + 1
            out.append(item)
    return out


def _checked(items: list[Item], where: str) -> list[Item]:
    for n, item in enumerate(items):
        if not item.prompt:
            raise ConfigError(f"empty prompt in data row {n + 1}", where=where, fix="fill in or remove that row")
    return items


# ---- scoring -----------------------------------------------------------------------------------------------------


def outcome(grade, reading: str) -> float | None:
    """What one graded reply contributes to a figure: 1/0 for harmful / refused, the harm score for ``score``;
    None where the grader gave no such reading."""
    if reading == "score":
        return grade.score
    if reading == "harmful":
        harmful = grade.harm()
        return None if harmful is None else float(harmful)
    return None if grade.refused is None else float(grade.refused)


def figures(bench: Benchmark, rows: Sequence[dict[str, Any]], grades: Sequence, *, samples: int = 1000,
            seed: int = 0) -> dict[str, dict[str, Any]]:
    """Each of the benchmark's metrics over graded rows (``set``, ``degenerate``): value and 95% bootstrap
    interval over prompts, n, and the replies left out (degenerate, or no reading by the grader)."""
    from cai.evaluation.elo import mean_interval

    out = {}
    for key in bench.metrics:
        label, set_name, reading, higher = METRICS[key]
        mine = [(r, g) for r, g in zip(rows, grades, strict=True) if r["set"] == set_name]
        degenerate = sum(1 for r, _ in mine if r["degenerate"])
        values = [v for r, g in mine if not r["degenerate"] and (v := outcome(g, reading)) is not None]
        unread = len(mine) - degenerate - len(values)
        value, low, high = mean_interval(values, samples=samples, seed=seed) if values else (None, None, None)
        out[key] = {"label": label, "value": value, "low": low, "high": high, "n": len(mine), "scored": len(values),
                    "degenerate": degenerate, "unparseable": unread, "higher_is_better": higher}
    return out


def run_benchmark(name: str, models: Sequence[str], out_dir: Path, *, load: Callable[[str], Any], grader,
                  grader_agreement: dict[str, Any], data: str | Path | None = None, limit: int | None = None,
                  max_new_tokens: int = 256, seed: int = 0) -> dict[str, Any]:
    """Run benchmark ``name`` on each model spec (``load`` gives a backend) and write ``out_dir/eval.json``."""
    from cai.backends.base import SamplingParams
    from cai.evaluation.graders import check_parsed
    from cai.evaluation.replies import degenerate_reason
    from cai.jsonl import write_atomic

    bench = benchmark(name)
    items, source = load_items(name, data, limit=limit)
    params = SamplingParams(max_new_tokens=max_new_tokens, temperature=0.0, do_sample=False, seed=seed)
    result: dict[str, Any] = {"benchmark": name, "title": bench.title, "source": source, "limit": limit,
                              "sets": {s: sum(i.set == s for i in items) for s in ("harmful", "safe")},
                              "sampling": params.to_dict(), "grader": grader_agreement,
                              "recommended_grader": bench.recommended_grader, "models": []}
    for spec in models:
        backend = load(spec)
        replies = [c.text for c in backend.generate([[{"role": "user", "content": i.prompt}] for i in items], params,
                                                    desc=f"{name} replies")]
        grades = grader.grade([(i.prompt, r) for i, r in zip(items, replies, strict=True)])
        check_parsed(grades, grader.name)
        rows = [{"id": i.id, "set": i.set, "category": i.category, "prompt": i.prompt, "reply": r,
                 "degenerate": degenerate_reason(r), "grade": g.to_dict()}
                for i, r, g in zip(items, replies, grades, strict=True)]
        result["models"].append({"spec": spec, "model": backend.model_id,
                                 "figures": figures(bench, rows, grades, seed=seed), "rows": rows})
        del backend  # before the next load: two models never share the memory
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(out_dir / "eval.json", json.dumps(result, indent=2) + "\n")
    return result

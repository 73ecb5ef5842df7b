"""The Python API: `import cai` stays light, and the docs' example runs as written (on a tiny model)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

API_PAGE = Path(__file__).parent.parent / "docs" / "reference" / "api.md"


def test_import_cai_loads_no_heavy_library_and_exports_the_api():
    code = ("import sys, cai; print(sorted(m for m in ('torch', 'transformers', 'trl') if m in sys.modules)); "
            "print(cai.load_constitution('general').name)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:2] == ["[]", "general"]


def test_the_documented_python_example_runs(tmp_path, tiny_model_dir, monkeypatch):
    block = re.search(r"```python\n(.*?)```", API_PAGE.read_text(), re.S)
    assert block, "docs/reference/api.md has no Python example"
    code = block.group(1).replace('"smollm2-135m"', repr(str(tiny_model_dir)))
    assert code != block.group(1)
    (tmp_path / "my-constitution.yaml").write_text((Path(__file__).parent.parent / "src" / "cai" / "constitutions"
                                                    / "customer-service.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    printed = []
    exec(compile(code, str(API_PAGE), "exec"), {"print": printed.append})  # noqa: S102 -- the documented example
    replies, rates = printed
    assert len(replies) == 1 and isinstance(replies[0], str)
    assert (tmp_path / "runs/api/critique/records.jsonl").is_file()
    assert (tmp_path / "runs/api/labels/pairs.jsonl").exists() or (tmp_path / "runs/api/labels/skipped.jsonl").exists()
    assert (tmp_path / "runs/api/sft/config.json").is_file()
    assert list(rates) == [str(tiny_model_dir), str(Path("runs/api/sft"))]  # the path train_sft returned
    assert all(0 <= r["harmful_refusal"] <= 1 and 0 <= r["safe_refusal"] <= 1 for r in rates.values())

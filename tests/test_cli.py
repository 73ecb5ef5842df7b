"""The ``cai`` entry point as a real process: exit statuses, usage errors, outputs flushed on exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "constitutions"


def _cai(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cai", *args], capture_output=True, text=True, timeout=120,
                          cwd=cwd)


def test_usage_errors_exit_2_with_a_message_and_no_traceback():
    for args, message in [(("nosuchcommand",), "No such command"),
                          (("critique",), "Missing argument"),
                          (("label", "--out", "x", "--samples", "many"), "--samples")]:
        run = _cai(*args)
        assert run.returncode == 2, args
        assert message in run.stderr, (args, run.stderr)
        assert "Traceback" not in run.stdout + run.stderr, args


def test_a_finished_command_exits_0_with_its_output_and_files_written(tmp_path):
    run = _cai("constitution", "list")
    assert run.returncode == 0, run.stderr
    assert all(name in run.stdout for name in ("general", "seed", "redteam", "customer-service"))
    out = tmp_path / "imported.yaml"
    run = _cai("constitution", "import", str(FIXTURES / "anthropic_prompts.json"), "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert _cai("constitution", "validate", str(out)).returncode == 0  # written whole before the exit

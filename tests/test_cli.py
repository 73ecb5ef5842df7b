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


def test_a_mistyped_model_fails_at_once_with_a_did_you_mean(tmp_path):
    import os
    import time

    prompts = tmp_path / "p.txt"
    prompts.write_text("How do I bake bread?\n")
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "cai", "critique", str(prompts), "--out", str(tmp_path / "c"),
                          "--model", "smollm2-135"], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "HF_HUB_OFFLINE": "0"})
    assert run.returncode == 2 and "did you mean 'smollm2-135m'" in run.stderr
    assert time.monotonic() - start < 30 and "Traceback" not in run.stderr
    assert "did you mean" in (tmp_path / "c" / "cai.log").read_text()  # the error is in the run's log too


def test_generate_writes_one_row_per_prompt_and_resumes(tmp_path, tiny_model_dir):
    import json

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"Question {i}?"}) + "\n" for i in range(3)))
    args = ("generate", str(prompts), "--out", str(tmp_path / "g"), "--model", str(tiny_model_dir),
            "--max-new-tokens", "4", "--dtype", "fp32")
    run = _cai(*args, "--limit", "2")
    assert run.returncode == 0, run.stderr
    run = _cai(*args)  # the third prompt only
    assert run.returncode == 0 and "1 answers written" in run.stdout and "2 already there" in run.stdout
    rows = [json.loads(x) for x in (tmp_path / "g" / "generations.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["q0", "q1", "q2"] and all(r["prompt"] and "response" in r for r in rows)
    assert rows[0]["provenance"]["model"] and rows[0]["provenance"]["sampling"]["max_new_tokens"] == 4


def test_chat_answers_each_line_of_piped_input(tiny_model_dir):
    run = subprocess.run([sys.executable, "-m", "cai", "chat", "--model", str(tiny_model_dir), "--max-new-tokens",
                          "3", "--temperature", "0", "--dtype", "fp32"], input="Hello\n/reset\nAgain\n/exit\n",
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    before, after = run.stdout.split("(new conversation)\n")  # a reply on each side of the reset
    assert before.endswith("\n") and after.endswith("\n")


def test_ctrl_c_exits_130_and_says_how_to_resume(tmp_path):
    import signal
    import time

    code = ("import time, typer, cai.cli as c\n"
            "@c.app.command('nap')\n"
            "def nap():\n"
            "    print('ready', flush=True)\n"
            "    time.sleep(60)\n"
            "c.main()\n")
    proc = subprocess.Popen([sys.executable, "-c", code, "nap"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert proc.stdout.readline().strip() == "ready"  # SIGINT ignored as in a script's background job
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "interrupted; run the same command again to resume" in err

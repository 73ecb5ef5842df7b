"""The memory guard and lean training: micro-batches train as one batch, the estimate is near the measured
peak, and a stage that does not fit stops before loading anything, with exit status 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cai import guard
from cai.train.dpo import DPOOptions, build_dpo_trainer
from cai.train.sft import SFTOptions, build_sft_trainer

pytestmark = pytest.mark.usefixtures("one_thread")

ROWS = [{"prompt": [{"role": "user", "content": f"Give me a tip for houseplant number {i}."}],
         "completion": [{"role": "assistant", "content": "Water it when the top of the soil is dry" + "!" * i}]}
        for i in range(4)]
PAIRS = [{"prompt": r["prompt"], "chosen": r["completion"],
          "rejected": [{"role": "assistant", "content": f"No {i}."}]} for i, r in enumerate(ROWS)]


def _first_step(build, rows, model_dir, tokenizer, tmp_path, options) -> tuple[float, float, dict]:
    """(loss, gradient norm, weights after the step) of one optimiser step."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    trainer = build(model, tokenizer, rows, tmp_path, options)
    trainer.train()
    logged = next(h for h in trainer.state.log_history if "loss" in h)
    return logged["loss"], logged["grad_norm"], {k: v.detach().clone() for k, v in trainer.model.named_parameters()}


def _same_step(a, b) -> None:
    """Same loss and gradient norm; the same weights but for elements whose tiny gradient Adam's first step
    (lr * sign) turns the other way on rounding differences."""
    assert a[0] == pytest.approx(b[0], rel=1e-5) and a[1] == pytest.approx(b[1], rel=1e-4)
    for name, w in a[2].items():
        close = (b[2][name] - w).abs() <= 1e-6 + 1e-4 * w.abs()
        assert close.float().mean() > 0.99, name


@pytest.mark.parametrize("micro", [1, 2])
def test_sft_micro_batches_make_the_same_step_as_one_batch(micro, tiny_model_dir, tokenizer, tmp_path):
    common = dict(max_steps=1, batch_size=4, learning_rate=1e-2, dtype="fp32")
    whole = _first_step(build_sft_trainer, ROWS, tiny_model_dir, tokenizer, tmp_path / "a",
                        SFTOptions(**common, micro_batch_size=4))
    parts = _first_step(build_sft_trainer, ROWS, tiny_model_dir, tokenizer, tmp_path / "b",
                        SFTOptions(**common, micro_batch_size=micro))
    _same_step(whole, parts)


def test_dpo_micro_batches_make_the_same_step_as_one_batch(tiny_model_dir, tokenizer, tmp_path):
    def build(model, tok, rows, out, options):
        return build_dpo_trainer(model, tok, rows, out, options, in_order=True)

    common = dict(max_steps=1, batch_size=4, learning_rate=1e-2, dtype="fp32")
    whole = _first_step(build, PAIRS, tiny_model_dir, tokenizer, tmp_path / "a",
                        DPOOptions(**common, micro_batch_size=4))
    parts = _first_step(build, PAIRS, tiny_model_dir, tokenizer, tmp_path / "b",
                        DPOOptions(**common, micro_batch_size=2))
    _same_step(whole, parts)


def test_a_micro_batch_must_divide_the_batch():
    with pytest.raises(ValueError, match="does not divide"):
        SFTOptions(batch_size=8, micro_batch_size=3)


def test_the_guard_picks_the_largest_micro_batch_that_fits(monkeypatch):
    shape = guard.ModelShape(params=135_000_000, layers=30, hidden=576, intermediate=1536, kv_dim=192)
    sizes = dict(row_tokens=512, seqs_per_row=2)
    need = {m: guard.training_estimate("dpo", shape, micro_batch=m, **sizes).total for m in (1, 2, 4)}
    assert need[1] < need[2] < need[4]
    monkeypatch.setattr("cai.memory.rss_bytes", lambda: guard.RUNTIME_BYTES)
    free = int((need[2] - guard.RUNTIME_BYTES) / guard.HEADROOM) + 1  # room for 2 rows a pass, not for 4
    monkeypatch.setattr(guard, "room", lambda: (free, "test"))
    chosen = guard.fit_micro_batch("dpo", shape, batch_size=8, wanted=None, cap=4, fix="x", **sizes)
    assert chosen.micro_batch == 2 and guard.recorded[-1] is chosen
    monkeypatch.setattr(guard, "room", lambda: (need[1] // 4, "test"))
    with pytest.raises(guard.MemoryGuardError, match="stage dpo needs about"):
        guard.fit_micro_batch("dpo", shape, batch_size=8, wanted=None, cap=4, fix="x", **sizes)


def test_checkpointing_keeps_fewer_activations_in_the_estimate():
    shape = guard.ModelShape.from_config({"hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
                                          "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152})
    assert 130e6 < shape.params < 140e6  # SmolLM2-135M's shape
    on = guard.training_estimate("sft", shape, micro_batch=4, row_tokens=256)
    off = guard.training_estimate("sft", shape, micro_batch=4, row_tokens=256, checkpointing=False)
    assert off.parts["activations"] > 5 * on.parts["activations"]


def _sft_file(tmp_path: Path, n: int = 8) -> Path:
    path = tmp_path / "sft.jsonl"
    path.write_text("".join(json.dumps({"messages": [*ROWS[i % 4]["prompt"], *ROWS[i % 4]["completion"]]}) + "\n"
                            for i in range(n)))
    return path


PEAK_SCRIPT = """
import json, sys
from cai import guard
from cai.memory import peak_rss_bytes
from cai.train.sft import SFTOptions, train_sft
train_sft(sys.argv[1], sys.argv[2], model=sys.argv[3], options=SFTOptions(max_steps=2, batch_size=4, dtype="fp32"))
peak = peak_rss_bytes()  # VmHWM: ru_maxrss would keep the forking test process's peak across exec
print(json.dumps({"estimate": guard.recorded[-1].total, "peak": peak, "micro": guard.recorded[-1].micro_batch}))
"""


def test_the_estimate_is_within_a_factor_of_1_6_of_the_measured_peak(tokenizer, tmp_path):
    """On a model big enough for its weights and optimizer state to count (a 25M-parameter Llama, the SmolLM2
    vocabulary), in a fresh process: estimate / peak resident memory in [1/1.6, 1.6]."""
    from conftest import build_tiny_llama

    model = build_tiny_llama(tmp_path / "m", tokenizer, hidden=256, layers=4, intermediate_size=1024,
                             num_attention_heads=4, num_key_value_heads=2)
    run = subprocess.run([sys.executable, "-c", PEAK_SCRIPT, str(_sft_file(tmp_path)), str(tmp_path / "o"),
                          str(model)], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "CAI_TRAIN_BF16": "0"})
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["micro"] == 4  # the whole batch of 4 (the cap is 4), with room to spare
    assert 1 / 1.6 <= got["estimate"] / got["peak"] <= 1.6, got


def test_a_stage_that_does_not_fit_stops_with_the_guards_message_and_loses_nothing(tiny_model_dir, tmp_path):
    data = _sft_file(tmp_path)
    env = {**os.environ, "CAI_MEMORY_LIMIT": "200"}  # MiB: less than the runtime alone
    run = subprocess.run([sys.executable, "-m", "cai", "sft", str(data), "--out", str(tmp_path / "o"),
                          "--model", str(tiny_model_dir), "--max-steps", "1"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "stage sft needs about" in run.stderr and "CAI_MEMORY_LIMIT=200 MiB" in run.stderr
    assert "micro_batch_size" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "o" / "model.safetensors").exists()
    assert data.read_text().count("\n") == 8  # the input is untouched


def test_the_reward_model_stage_is_guarded_too(tiny_model_dir, tmp_path):
    """The reward model trains behind the same guard: where it does not fit, exit 2 with its message."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    run = subprocess.run([sys.executable, "-m", "cai", "reward", str(pairs), "--out", str(tmp_path / "rm"),
                          "--model", str(tiny_model_dir), "--max-steps", "1"],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "CAI_MEMORY_LIMIT": "200"})
    assert run.returncode == 2, run.stderr[-2000:]
    assert "stage reward needs about" in run.stderr and "Traceback" not in run.stderr
    assert not (tmp_path / "rm" / "model.safetensors").exists()

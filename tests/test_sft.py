"""SL-CAI SFT: reading the data, the response-only loss mask, and a saved model that loads and generates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cai.errors import ConfigError
from cai.train.data import read_sft_data
from cai.train.sft import SFTOptions, build_sft_trainer, capped_openings, opening, train_sft, weighted_rows

CONSTITUTION = {"name": "test-constitution", "version": "1.0", "hash": "c0ffee"}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models train faster on one thread


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def sft_rows(n: int = 6) -> list[dict]:
    return [
        {
            "id": f"r{i}",
            "messages": [
                {"role": "user", "content": f"How do I pick lock number {i}?"},
                {"role": "assistant", "content": f"I can't help you get into a place that isn't yours ({i}); "
                                                 "a locksmith can help if it is your own lock."},
            ],
            "constitution": CONSTITUTION,
        }
        for i in range(n)
    ]


@pytest.fixture()
def sft_file(tmp_path) -> Path:
    return write_jsonl(tmp_path / "sft.jsonl", sft_rows())


def test_messages_rows_split_into_prompt_and_last_assistant_turn(tmp_path):
    rows = [
        {"messages": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello!"}], "constitution": CONSTITUTION},
        {"prompt": "Plain prompt", "completion": "Plain answer"},
    ]
    data = read_sft_data(write_jsonl(tmp_path / "d.jsonl", rows))
    assert data.rows[0]["prompt"] == rows[0]["messages"][:2]
    assert data.rows[0]["completion"] == [{"role": "assistant", "content": "Hello!"}]
    assert data.rows[1] == {"prompt": [{"role": "user", "content": "Plain prompt"}],
                            "completion": [{"role": "assistant", "content": "Plain answer"}]}
    assert data.constitution == CONSTITUTION
    assert len(data.sha256) == 64


@pytest.mark.parametrize(
    ("rows", "needle"),
    [
        ([], "no rows"),
        ([{"messages": [{"role": "user", "content": "only a question"}]}], "no assistant turn"),
        ([{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "  "}]}], "empty"),
        ([{"text": "neither format"}], "neither"),
        (["not json"], "not valid JSON"),
    ],
)
def test_bad_sft_data_names_the_file_and_line(tmp_path, rows, needle):
    path = write_jsonl(tmp_path / "bad.jsonl", sft_rows(1) + rows if rows else [])
    with pytest.raises(ConfigError) as err:
        read_sft_data(path)
    assert needle in str(err.value)
    assert str(path) in str(err.value)
    if rows:
        assert ":2" in str(err.value) or "line 2" in str(err.value)


def test_helpful_rows_are_weighted_and_the_rest_kept_once(tmp_path):
    helpful = [{"id": f"h{i}", "kind": "helpful", "messages": [{"role": "user", "content": f"Plain question {i}"},
               {"role": "assistant", "content": f"A plain answer {i}."}]} for i in range(4)]
    data = read_sft_data(write_jsonl(tmp_path / "d.jsonl", sft_rows(3) + helpful))
    assert data.kinds == [None] * 3 + ["helpful"] * 4

    def count(rows):
        return sum(r["prompt"][0]["content"].startswith("Plain") for r in rows), len(rows)

    assert count(weighted_rows(data.rows, data.kinds, 1.0)) == (4, 7)
    assert count(weighted_rows(data.rows, data.kinds, 2.0)) == (8, 11)
    assert count(weighted_rows(data.rows, data.kinds, 1.5)) == (6, 9)
    assert count(weighted_rows(data.rows, data.kinds, 0.0)) == (0, 3)
    assert weighted_rows(data.rows, data.kinds, 1.5, seed=1) == weighted_rows(data.rows, data.kinds, 1.5, seed=1)


def test_revisions_sharing_an_opening_sentence_are_capped_and_helpful_rows_kept(tmp_path):
    def row(i, answer, kind=None):
        return {"id": f"r{i}", **({"kind": kind} if kind else {}),
                "messages": [{"role": "user", "content": f"Request {i}"}, {"role": "assistant", "content": answer}]}

    stock = "I'm sorry, but I can't help with that."
    rows = [row(0, stock + " Try a locksmith."), row(1, "i'm  SORRY, but I can't help with that. Ask a doctor."),
            row(2, stock), row(3, "Here is a safer way to do it."), row(4, stock, kind="helpful"),
            row(5, stock, kind="helpful")]
    data = read_sft_data(write_jsonl(tmp_path / "d.jsonl", rows))
    assert opening(rows[1]["messages"][1]["content"]) == opening(stock)
    def kept(cap):
        rows, kinds = capped_openings(data.rows, data.kinds, cap)
        assert len(rows) == len(kinds)
        return [data.rows.index(r) for r in rows], kinds

    assert kept(2) == ([0, 1, 3, 4, 5], [None, None, None, "helpful", "helpful"])
    assert kept(1) == ([0, 3, 4, 5], [None, None, "helpful", "helpful"])
    assert kept(None) == ([0, 1, 2, 3, 4, 5], data.kinds)


def test_missing_sft_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        train_sft(tmp_path / "nope.jsonl", tmp_path / "out", model="unused")
    assert not (tmp_path / "out").exists()  # nothing written


def test_only_response_tokens_are_trained(tiny_model_dir, tokenizer, sft_file, tmp_path):
    """The SL-CAI loss mask: every prompt token has label -100; every completion token is trained."""
    from transformers import AutoModelForCausalLM

    data = read_sft_data(sft_file)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trainer = build_sft_trainer(model, tokenizer, data.rows, tmp_path / "scratch", SFTOptions(max_steps=1))
    dataset = trainer.train_dataset
    assert len(dataset) == len(data.rows)
    for example in dataset:
        ids, labels = example["input_ids"], example["labels"]
        n_prompt = next(i for i, lab in enumerate(labels) if lab != -100)
        assert all(lab == -100 for lab in labels[:n_prompt])
        assert labels[n_prompt:] == ids[n_prompt:]
        prompt_text = tokenizer.decode(ids[:n_prompt])
        row = next(r for r in data.rows if r["prompt"][0]["content"] in prompt_text)  # user turns differ
        prompt_only = tokenizer.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
        assert ids[:n_prompt] == tokenizer(prompt_only, add_special_tokens=False)["input_ids"]
        trained_text = tokenizer.decode(ids[n_prompt:])
        assert trained_text.startswith(row["completion"][0]["content"])
        assert "<|im_end|>" in trained_text  # the model also learns to stop

    batch = trainer.data_collator([dataset[0], dataset[1]])
    trained = batch["labels"] != -100
    assert trained.any(dim=1).all()
    assert (batch["labels"][~trained] == -100).all()
    assert (batch["attention_mask"][batch["labels"] != -100] == 1).all()  # padding is never trained


def test_two_steps_save_a_model_that_loads_and_generates(tiny_model_dir, sft_file, tmp_path):
    import torch

    from cai.models import load_causal_lm, load_tokenizer, resolve

    out = train_sft(sft_file, tmp_path / "sft", model=str(tiny_model_dir),
                    options=SFTOptions(max_steps=2, batch_size=2, learning_rate=1e-3))
    assert not (out / ".partial").exists()
    card = json.loads((out / "cai_model.json").read_text())
    assert card["stage"] == "sft" and card["constitution"] == CONSTITUTION and card["rows"] == 6
    assert card["metrics"]["steps"] == 2 and card["metrics"]["final_loss"] > 0
    readme = (out / "README.md").read_text()
    assert "c0ffee" in readme and card["data_sha256"] in readme
    assert (out / "cai.log").read_text().count("SFT done") == 1

    source = resolve(str(out))
    assert source.model_id == card["model_id"]
    model, tok = load_causal_lm(source, dtype=torch.float32, device="cpu"), load_tokenizer(source)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                     return_tensors="pt", return_dict=True)
    generated = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert generated.shape[1] == prompt["input_ids"].shape[1] + 4


def test_sft_learns_the_revisions_on_a_tiny_model(tiny_model_dir, sft_file, tmp_path):
    """Six steps at a high learning rate on six near-identical revisions: the loss on the response tokens
    falls clearly below where it started (a run whose optimizer step did nothing would stay put)."""
    out = train_sft(sft_file, tmp_path / "sft", model=str(tiny_model_dir),
                    options=SFTOptions(max_steps=6, batch_size=2, learning_rate=5e-3))
    metrics = json.loads((out / "cai_model.json").read_text())["metrics"]
    assert metrics["final_loss"] < metrics["first_loss"] - 0.5  # a random tiny model: 10.8 -> about 10.0


def test_lora_is_merged_into_a_plain_model(tiny_model_dir, sft_file, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    out = train_sft(sft_file, tmp_path / "lora", model=str(tiny_model_dir),
                    options=SFTOptions(max_steps=2, batch_size=2, learning_rate=1e-2, lora=True, lora_r=4))
    assert not (out / "adapter_config.json").exists()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tuned = AutoModelForCausalLM.from_pretrained(out)
    name = "model.layers.0.self_attn.q_proj.weight"
    assert name in dict(tuned.named_parameters())
    assert not torch.equal(dict(base.named_parameters())[name], dict(tuned.named_parameters())[name])


def test_a_failed_run_leaves_no_loadable_model(tiny_model_dir, sft_file, tmp_path, monkeypatch):
    import cai.train.sft as sft

    class Exploding:  # a trainer that fails in train(); callbacks are accepted as a Trainer's are
        model = None

        def __init__(self, *a, **k):
            pass

        def remove_callback(self, callback):
            pass

        def add_callback(self, callback):
            pass

        def train(self):
            raise RuntimeError("boom")

    monkeypatch.setattr(sft, "build_sft_trainer", Exploding)
    out = tmp_path / "failed"
    with pytest.raises(RuntimeError, match="boom"):
        train_sft(sft_file, out, model=str(tiny_model_dir), options=SFTOptions(max_steps=1))
    assert not (out / "config.json").exists() and not (out / ".partial").exists()


def test_cli_reports_bad_data_without_traceback(tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "q"}]}])
    run = subprocess.run([sys.executable, "-m", "cai", "sft", str(bad), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "no assistant turn" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.slow
def test_one_step_on_the_embedded_model(embedded_model_dir, sft_file, tmp_path):
    out = train_sft(sft_file, tmp_path / "real", model="smollm2-135m",
                    options=SFTOptions(max_steps=1, batch_size=2))
    card = json.loads((out / "cai_model.json").read_text())
    assert card["base"] == "smollm2-135m" and card["model_id"].startswith("smollm2-135m+sft-")


def test_lora_under_bf16_autocast_trains_a_bf16_base_and_saves_fp32_with_the_update(tiny_model_dir, sft_file,
                                                                                      tmp_path, monkeypatch):
    """Where bf16 autocast runs, LoRA's frozen base loads in bf16 (half its memory); the adapters merge into the
    base's own fp32 weights, so the saved model is fp32, weights LoRA left alone are the base's exactly (not
    rounded to bf16), and adapted ones differ from the base by the trained update."""
    import torch
    from transformers import AutoModelForCausalLM

    from cai.train import options as train_options

    monkeypatch.setattr(train_options, "uses_bf16_autocast", lambda options: True)
    lora = SFTOptions(lora=True)
    assert train_options.weights_dtype(lora, frozen_base=True) == torch.bfloat16
    assert train_options.weights_dtype(lora) == torch.float32  # a reward head is trained, not frozen
    assert train_options.weights_dtype(SFTOptions(lora=False), frozen_base=True) == torch.float32
    out = train_sft(sft_file, tmp_path / "lora", model=str(tiny_model_dir),
                    options=SFTOptions(max_steps=2, batch_size=2, learning_rate=1e-2, lora=True, lora_r=4,
                                       dtype="fp32"))
    fp32_tuned = dict(AutoModelForCausalLM.from_pretrained(out).named_parameters())
    out = train_sft(sft_file, tmp_path / "lora-bf16-base", model=str(tiny_model_dir),
                    options=SFTOptions(max_steps=2, batch_size=2, learning_rate=1e-2, lora=True, lora_r=4))
    tuned = dict(AutoModelForCausalLM.from_pretrained(out, dtype="auto").named_parameters())
    base = dict(AutoModelForCausalLM.from_pretrained(tiny_model_dir).named_parameters())
    name = "model.layers.0.self_attn.q_proj.weight"
    assert tuned[name].dtype == torch.float32
    for kept in ("model.embed_tokens.weight", "model.layers.0.input_layernorm.weight"):
        assert torch.equal(tuned[kept], base[kept])  # the fp32 base itself, not its bf16 training copy
    assert not torch.equal(base[name], base[name].to(torch.bfloat16).float())  # (rounding would have shown)
    update = tuned[name] - base[name]
    assert update.abs().max() > 1e-3  # the adapters' update survived the merge
    assert torch.allclose(tuned[name], fp32_tuned[name], atol=5e-2)  # close to the same run on an fp32 base


def test_under_autocast_lora_adapters_read_their_input_uncast_only_while_training(tiny_model_dir, monkeypatch):
    """peft casts each adapter's input to fp32, which bf16 autocast casts straight back (two copies per adapted
    layer and pass); under autocast cai turns that off for the training loop, and only there."""
    from peft import get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    from cai.models import load_causal_lm, resolve
    from cai.train import options as train_options

    model = get_peft_model(load_causal_lm(resolve(str(tiny_model_dir))),
                           train_options.lora_config(SFTOptions(lora=True, lora_r=4), "CAUSAL_LM"))
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]

    def casting():
        return {getattr(m, "cast_input_dtype_enabled", True) for m in layers}

    with train_options.adapters_as_autocast_runs(model, SFTOptions(lora=True, dtype="fp32")):
        assert casting() == {True}  # no autocast: input and adapter dtypes must match
    monkeypatch.setattr(train_options, "uses_bf16_autocast", lambda options: True)
    with train_options.adapters_as_autocast_runs(model, SFTOptions(lora=True)):
        assert layers and casting() == {False}
    assert casting() == {True}


def test_a_trained_model_is_named_by_its_data_and_its_training_options():
    """Two seeds (or learning rates) on the same data are two models with two names; the micro-batch the memory
    guard picks on a machine does not change what is trained, nor the name."""
    from cai.train.artifacts import trained_model_id

    sha = "ab" * 32

    def name(**kw):
        return trained_model_id("m", "sft", sha, SFTOptions(**kw).model_dump())

    assert name(seed=0) != name(seed=1) and name(learning_rate=1e-3) != name(learning_rate=2e-3)
    assert name(seed=0) == name(seed=0, micro_batch_size=2) == name(seed=0, micro_batch_size=4)
    assert name(seed=0).startswith("m+sft-")

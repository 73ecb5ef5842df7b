"""Critique-revision throughput: cai's batched loop vs the seed design's one-prompt-at-a-time loop.

Both run in this process on the embedded model, over the same 32 prompts, 1 round (answer, critique,
revision), the same token budget per step and the same sampling settings. The seed loop is what the
original design did: for each prompt, ``model.generate`` the answer, then the critique, then the revision,
fp32, then the next prompt (it is timed on the first ``--seed-prompts`` prompts: enough for a rate).
Generated tokens are counted by re-tokenising the texts, the same way for both.

    .venv/bin/python benchmarks/critique_throughput.py [--new-tokens 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

BASE = ["How do I pick a lock?", "Write a poem about the sea.", "How can I get back at my boss?",
        "Explain photosynthesis to a child.", "How do I steal a car?", "Give me tips for a job interview.",
        "What household chemicals are dangerous to mix?", "Summarize the plot of Hamlet."]
CRITIQUE = "Identify specific ways in which your last response is harmful, unethical or dangerous."
REVISION = "Please rewrite your response to remove anything harmful."


def seed_loop(prompts: list[str], new_tokens: int) -> tuple[int, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from cai.models import resolve

    path = resolve("smollm2-135m").path
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def gen(msgs):
        x = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**x, max_new_tokens=new_tokens, do_sample=True, temperature=0.7)
        return tok.decode(out[0][x["input_ids"].shape[1]:], skip_special_tokens=True)

    texts, t0 = [], time.time()
    for p in prompts:
        m = [{"role": "user", "content": p}]
        r = gen(m)
        m += [{"role": "assistant", "content": r}, {"role": "user", "content": CRITIQUE}]
        c = gen(m)
        m += [{"role": "assistant", "content": c}, {"role": "user", "content": REVISION}]
        texts += [r, c, gen(m)]
    wall = time.time() - t0
    return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts), wall


def cai_loop(prompts: list[str], new_tokens: int) -> tuple[int, float]:
    from cai.backends.transformers import TransformersBackend
    from cai.constitution import parse_constitution
    from cai.critique import CritiqueOptions, run_chunk

    t0 = time.time()  # includes cai's own model load
    backend = TransformersBackend.load("smollm2-135m")
    const = parse_constitution(json.dumps({"name": "bench", "version": 1, "principles": [
        {"id": "harm", "critique": CRITIQUE, "revision": REVISION}]}))
    opts = CritiqueOptions(rounds=1, max_new_tokens=new_tokens, temperature=0.7, top_p=1.0, chunk_size=len(prompts))
    recs = run_chunk(backend, const, [(str(i), p) for i, p in enumerate(prompts)], opts)
    wall = time.time() - t0
    tok = backend.tokenizer
    texts = [t for r in recs for t in (r.initial, r.rounds[0].critique, r.rounds[0].revision)]
    return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts), wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--seed-prompts", type=int, default=8)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    prompts = [f"{p} (case {i})" for i, p in enumerate((BASE * 100)[: args.prompts])]
    seed_tokens, seed_wall = seed_loop(prompts[: args.seed_prompts], args.new_tokens)
    cai_tokens, cai_wall = cai_loop(prompts, args.new_tokens)
    result = {
        "prompts": args.prompts, "new_tokens": args.new_tokens,
        "seed_loop": {"tokens": seed_tokens, "seconds": round(seed_wall, 2),
                      "tok_per_s": round(seed_tokens / seed_wall, 1)},
        "cai": {"tokens": cai_tokens, "seconds": round(cai_wall, 2), "tok_per_s": round(cai_tokens / cai_wall, 1)},
    }
    result["ratio"] = round(result["cai"]["tok_per_s"] / result["seed_loop"]["tok_per_s"], 2)
    print(f"seed loop (one prompt at a time, fp32): {result['seed_loop']['tok_per_s']} tok/s")
    print(f"cai critique (batched, load included):  {result['cai']['tok_per_s']} tok/s")
    print(f"ratio: {result['ratio']}x (target >= 20x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

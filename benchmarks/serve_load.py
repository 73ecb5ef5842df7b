"""`cai serve reward` under an RL cluster's load: many clients at once against one client at a time.

Starts `cai serve reward` on 127.0.0.1 with a reward model on the embedded model (``--model-dir``; without it,
one is built the way ``cai reward`` starts one: the embedded model's body plus a fresh, seeded 1-output head,
untrained: the load is what is measured, not the scores). Then, in one run:

1. one client at a time: ``--serial`` requests of ``--texts`` texts, each sent after the last was answered;
   each of the first ``--templates`` requests fixes the reference answer of its texts;
2. ``--clients`` concurrent clients sending ``--requests`` requests in all (request i repeats template
   i % templates), within ``--time-limit`` seconds; a 503 is retried after its Retry-After (counted);
3. with ``--soak-seconds`` > 0, the same clients for that long: the server's resident memory at its start and end.

Every answer is matched to its request: it must have one reward per text, and lie nearer to its own
template's reference answer than to any other template's (bf16 scores move a little with a batch's padding).
Lost = requests sent without an answer (a failed connection or an error status; a request still refused with 503
when the time limit comes is counted apart); duplicated = texts the server scored (its /metrics) beyond
the answered ones. Prints throughput (requests/s, texts/s) and the ratio to one client at a time, p50/p99
latency of the answered try against the bound (queue bound / throughput + one batch) and from the
first try (503s and their Retry-After waits included), errors by status, and the server's peak memory.

    python benchmarks/serve_load.py [--clients 64] [--requests 2000] [--soak-seconds 300] [--json OUT]

The clients run in this process (threads, one connection per request, as OpenRLHF's ``requests.post`` does);
on a machine with few cores they compete with the server for CPU, so the ratio is a lower bound.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path

REFUSAL = "I can't help with that. If you are locked out, a licensed locksmith or your landlord can let you in."
ANSWERS = [
    "Sure. Start with the basics, then practise a little every day; write down what you learn so you can see "
    "your progress, and ask someone with more experience to look at your work.",
    "Here is a short answer: it depends on the details, but the usual approach works in most cases.",
    REFUSAL,
    "Step one: gather what you need. Step two: follow the instructions carefully. Step three: check the result.",
]


def template_queries(k: int, n: int, prompts: list[str]) -> list[str]:
    """Request template ``k``: ``n`` HH transcripts (prompt, answer) no other template repeats in that order."""
    return [f"Human: {prompts[(k * n + j) % len(prompts)]}\n\nAssistant: {ANSWERS[(k + j) % len(ANSWERS)]}"
            for j in range(n)]


def shipped_prompts() -> list[str]:
    from importlib.resources import files

    out = []
    for name in ("helpful.jsonl", "redteam.jsonl"):
        out += [json.loads(line)["prompt"] for line in files("cai").joinpath("data/prompts", name).open()]
    return out


def build_reward_model(out: Path) -> Path:
    """The embedded model's body with a fresh, seeded score head (``cai.train.reward.load_reward_base``)."""
    import torch

    from cai.models import load_tokenizer, resolve
    from cai.train.reward import load_reward_base

    source = resolve("smollm2-135m")
    tokenizer = load_tokenizer(source)
    model = load_reward_base(source, tokenizer, torch.float32, seed=0)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory_kib(pid: int, field: str) -> int:
    """VmRSS (resident now) or VmHWM (peak resident) of a process, KiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def post(url: str, queries: list[str], timeout: float) -> tuple[int | str, list[float] | None, float]:
    """(status, rewards or None, Retry-After seconds) of one POST; no answer (a connection error): the
    exception's name in place of the status."""
    data = json.dumps({"query": queries, "prompts": None, "labels": None}).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())["rewards"], 0.0
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, None, float(e.headers.get("Retry-After") or 1)
    except OSError as e:
        return type(e).__name__, None, 0.0


class Load:
    """Clients sending template requests until ``count`` are sent or ``deadline`` passes; records every outcome."""

    def __init__(self, url: str, templates: list[list[str]], count: int, deadline: float, timeout: float):
        self.url, self.templates, self.count, self.deadline, self.timeout = url, templates, count, deadline, timeout
        self.next, self.lock = 0, threading.Lock()
        self.latencies: list[float] = []  # from the first try (503s retried included) to the answer
        self.served: list[float] = []  # of the try that was answered: the server's own latency
        self.answers: list[tuple[int, list[float]]] = []  # (template, rewards) of each 200
        self.statuses: Counter = Counter()  # every response, 503s included
        self.lost = self.refused_at_deadline = 0

    def _take(self) -> int | None:
        with self.lock:
            if self.next >= self.count or time.monotonic() > self.deadline:
                return None
            self.next += 1
            return self.next - 1

    def client(self) -> None:
        while (i := self._take()) is not None:
            k = i % len(self.templates)
            started = time.perf_counter()
            while True:
                tried = time.perf_counter()
                status, rewards, retry = post(self.url, self.templates[k], self.timeout)
                with self.lock:
                    self.statuses[status] += 1
                if status != 503 or time.monotonic() > self.deadline:
                    break
                time.sleep(retry)
            with self.lock:
                if status == 200:
                    self.latencies.append(time.perf_counter() - started)
                    self.served.append(time.perf_counter() - tried)
                    self.answers.append((k, rewards))
                elif status == 503:  # still refused when the time ran out: backpressure, not a loss
                    self.refused_at_deadline += 1
                else:
                    self.lost += 1

    def run(self, clients: int) -> float:
        """Run ``clients`` threads to the end; returns the wall seconds."""
        started = time.perf_counter()
        threads = [threading.Thread(target=self.client, daemon=True) for _ in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - started


def mismatched(answers: list[tuple[int, list[float]]], reference: dict[int, list[float]]) -> int:
    """Answers with the wrong length, or nearer to another template's reference than to their own."""
    bad = 0
    for k, rewards in answers:
        if len(rewards) != len(reference[k]):
            bad += 1
            continue
        distance = {j: math.dist(rewards, ref) for j, ref in reference.items() if len(ref) == len(rewards)}
        bad += min(distance, key=distance.get) != k
    return bad


def scraped_texts(base: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(base + "/metrics", timeout=30) as r:
        text = r.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "cai_serve_texts_scored_total")


def by_status(counts: Counter) -> dict[str, int]:
    return {str(k): v for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))}


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


def start_server(model_dir: Path, args) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "cai", "serve", "reward", str(model_dir), "--port", str(port), "--batch-size",
           str(args.batch_size), "--max-queue", str(args.max_queue), "--max-texts", str(args.texts)]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "COLUMNS": "300"})
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(base + "/health", timeout=2):
                return server, base
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"cai serve exited:\n{server.stdout.read()}") from None
            time.sleep(0.2)
    server.kill()
    raise SystemExit("cai serve did not answer /health within 120 s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", type=Path, help="reward model directory (default: built from the embedded model)")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=2000, help="requests in the concurrent phase")
    ap.add_argument("--texts", type=int, default=8, help="texts per request")
    ap.add_argument("--serial", type=int, default=64, help="requests sent one at a time (the baseline)")
    ap.add_argument("--templates", type=int, default=32, help="distinct requests (each text's answer is checked)")
    ap.add_argument("--batch-size", type=int, default=32, help="the server's --batch-size")
    ap.add_argument("--max-queue", type=int, default=256, help="the server's --max-queue (texts)")
    ap.add_argument("--time-limit", type=float, default=1800, help="seconds the concurrent phase may take")
    ap.add_argument("--soak-seconds", type=float, default=300, help="0: no soak")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()
    if args.serial < args.templates:
        ap.error("--serial must be at least --templates (the serial phase fixes each template's reference answer)")

    prompts = shipped_prompts()
    templates = [template_queries(k, args.texts, prompts) for k in range(args.templates)]
    with tempfile.TemporaryDirectory(prefix="cai-serve-load-") as tmp:
        model_dir = args.model_dir or build_reward_model(Path(tmp) / "rm")
        server, base = start_server(model_dir, args)
        url = base + "/get_reward"
        try:
            result = run_phases(server, base, url, templates, args)
        finally:
            server.terminate()
            server.wait(timeout=60)
    report(result, args)


def run_phases(server, base: str, url: str, templates, args) -> dict:
    # one client at a time; its first answers fix the reference answer of every template
    serial = Load(url, templates, args.serial, time.monotonic() + args.time_limit, timeout=600)
    serial_s = serial.run(1)
    reference: dict[int, list[float]] = {}
    for k, rewards in serial.answers:
        reference.setdefault(k, rewards)
    if len(reference) < len(templates):
        raise SystemExit(f"the serial phase answered {len(reference)} of {len(templates)} templates: "
                         f"statuses {dict(serial.statuses)}")
    texts_before = scraped_texts(base)

    load = Load(url, templates, args.requests, time.monotonic() + args.time_limit, timeout=600)
    load_s = load.run(args.clients)
    duplicated = scraped_texts(base) - texts_before - args.texts * len(load.answers)
    result = {
        "cpu": cpu_name(), "cores": os.cpu_count(), "clients": args.clients, "texts_per_request": args.texts,
        "batch_size": args.batch_size, "max_queue": args.max_queue,
        "serial": {"requests": len(serial.answers), "seconds": round(serial_s, 2),
                   "requests_per_s": len(serial.answers) / serial_s,
                   "p50_s": percentile(serial.latencies, 50), "statuses": dict(serial.statuses)},
        "load": {"requests": len(load.answers), "asked": args.requests, "sent": load.next,
                 "seconds": round(load_s, 2), "requests_per_s": len(load.answers) / load_s,
                 "p50_s": percentile(load.served, 50), "p99_s": percentile(load.served, 99),
                 "p50_with_retries_s": percentile(load.latencies, 50),
                 "p99_with_retries_s": percentile(load.latencies, 99),
                 "statuses": by_status(load.statuses), "lost": load.lost,
                 "refused_at_deadline": load.refused_at_deadline,
                 "mismatched": mismatched(load.answers, reference), "duplicated_texts": duplicated},
    }
    texts_per_s = result["load"]["requests_per_s"] * args.texts
    result["load"]["p99_bound_s"] = args.max_queue / texts_per_s + args.batch_size / texts_per_s
    result["ratio"] = result["load"]["requests_per_s"] / result["serial"]["requests_per_s"]
    result["server_peak_mib"] = memory_kib(server.pid, "VmHWM") / 1024
    if args.soak_seconds > 0:
        start_rss = memory_kib(server.pid, "VmRSS")
        soak = Load(url, templates, 10**9, time.monotonic() + args.soak_seconds, timeout=600)
        soak_s = soak.run(args.clients)
        end_rss = memory_kib(server.pid, "VmRSS")
        result["soak"] = {"seconds": round(soak_s, 1), "requests": len(soak.answers), "lost": soak.lost,
                          "statuses": by_status(soak.statuses),
                          "mismatched": mismatched(soak.answers, reference),
                          "rss_start_mib": start_rss / 1024, "rss_end_mib": end_rss / 1024,
                          "growth": end_rss / start_rss - 1}
    result["server_peak_mib"] = memory_kib(server.pid, "VmHWM") / 1024
    return result


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


def report(r: dict, args) -> None:
    s, ld = r["serial"], r["load"]
    print(f"CPU: {r['cpu']} ({r['cores']} cores); batch size {r['batch_size']}, queue bound {r['max_queue']} texts, "
          f"{r['texts_per_request']} texts per request")
    print(f"one client at a time: {s['requests']} requests in {s['seconds']} s = {s['requests_per_s']:.2f} req/s "
          f"({s['requests_per_s'] * args.texts:.1f} texts/s), p50 {s['p50_s'] * 1000:.0f} ms")
    print(f"{r['clients']} clients: {ld['requests']} of {ld['asked']} requests answered in {ld['seconds']} s = "
          f"{ld['requests_per_s']:.2f} req/s ({ld['requests_per_s'] * args.texts:.1f} texts/s): "
          f"{r['ratio']:.2f}x one client at a time")
    print(f"latency of the answered try: p50 {ld['p50_s']:.2f} s, p99 {ld['p99_s']:.2f} s (bound: queue / throughput + "
          f"one batch = {ld['p99_bound_s']:.2f} s); from the first try, 503s retried: p50 "
          f"{ld['p50_with_retries_s']:.2f} s, p99 {ld['p99_with_retries_s']:.2f} s")
    print(f"responses by status (503s retried): {ld['statuses']}; lost {ld['lost']}, mismatched {ld['mismatched']}, "
          f"duplicated texts {ld['duplicated_texts']:g}; still refused (503) when the time limit came: "
          f"{ld['refused_at_deadline']}; not sent: {ld['asked'] - ld['sent']}")
    if "soak" in r:
        k = r["soak"]
        print(f"soak {k['seconds']} s: {k['requests']} requests, statuses {k['statuses']}, lost {k['lost']}, "
              f"mismatched {k['mismatched']}; server RSS {k['rss_start_mib']:.0f} -> {k['rss_end_mib']:.0f} MiB "
              f"({k['growth'] * 100:+.1f}%)")
    print(f"server peak memory (VmHWM): {r['server_peak_mib']:.0f} MiB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()

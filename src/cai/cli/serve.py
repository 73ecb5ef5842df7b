"""``cai serve reward|judge``: a reward model or the judge behind HTTP, for OpenRLHF's ``--remote_rm_url``,
verl (``cai.feedback.verl_reward``) or any client of the same protocol."""

from __future__ import annotations

from pathlib import Path

import typer

API_KEY_ENV = "CAI_SERVE_API_KEY"

# the options both commands share, defined once
PORT = typer.Option(5000, help="TCP port")
HOST = typer.Option("127.0.0.1", help="address to bind; 127.0.0.1 keeps it on this machine (any other address "
                                      "needs --api-key, or --insecure to serve without one)")
API_KEY = typer.Option(None, "--api-key", envvar=API_KEY_ENV, show_default=False,
                       help=f"require `Authorization: Bearer KEY` on every route but /health (prefer the "
                            f"{API_KEY_ENV} environment variable: a command line is visible to other users)")
INSECURE = typer.Option(False, "--insecure", help="serve a non-loopback address without an API key: anyone who "
                                                  "can reach it can query the model")
MAX_QUEUE = typer.Option(1024, "--max-queue", min=1, help="texts held (waiting or being scored), at most; a "
                                                          "request that would overflow it gets 503 with Retry-After")
MAX_TEXTS = typer.Option(256, "--max-texts", min=1, help="texts per request, at most (413 above)")
TIMEOUT = typer.Option(300.0, "--timeout", min=0.001, help="seconds a request may wait to be scored (504 after); "
                                                           "also how long a client may take to send its body")


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Serve a reward model or the judge over OpenRLHF's remote reward protocol "
                             "(POST /get_reward, GET /health, GET /metrics).", no_args_is_help=True)

    @group.command("reward")
    def reward(
        model_dir: Path = typer.Argument(..., help="reward model directory from `cai reward`"),
        port: int = PORT, host: str = HOST, api_key: str = API_KEY, insecure: bool = INSECURE,
        batch_size: int = typer.Option(16, "--batch-size", min=1, help="texts scored per forward pass"),
        max_queue: int = MAX_QUEUE, max_texts: int = MAX_TEXTS, timeout: float = TIMEOUT,
    ) -> None:
        """Serve a reward model: each query's score is the model's scalar output."""
        from cai.errors import ModelError
        from cai.feedback.reward_judge import RewardJudge, is_reward_model_dir

        limits = _limits(max_queue, max_texts, timeout)
        _check_access(host, api_key, insecure)
        if not is_reward_model_dir(model_dir):
            raise ModelError(f"{model_dir} is not a reward model directory (no sequence-classification config.json)",
                             fix="train one with `cai reward PAIRS --out DIR`, or serve a chat model with "
                                 "`cai serve judge MODEL`")
        _serve(RewardJudge.load(model_dir, batch_size=batch_size), host, port, batch_size, "reward_model", limits,
               api_key)

    @group.command("judge")
    def judge(
        model: str = typer.Argument("smollm2-135m", help="judge model: embedded name, local dir, .gguf, Hub id "
                                    "or openai:MODEL@URL"),
        constitution: str = typer.Option("general", help="constitution whose preference principles judge"),
        principles: str = typer.Option("ensemble", help="single (one principle per prompt, drawn by weight) | "
                                       "ensemble (several, averaged)"),
        port: int = PORT, host: str = HOST, api_key: str = API_KEY, insecure: bool = INSECURE,
        batch_size: int = typer.Option(16, "--batch-size", min=1, help="texts gathered per judge call"),
        max_queue: int = MAX_QUEUE, max_texts: int = MAX_TEXTS, timeout: float = TIMEOUT,
        dtype: str = typer.Option("auto", help="auto | bf16 | fp32 (local models)"),
        seed: int = typer.Option(0, help="seed of the principle draw per prompt"),
    ) -> None:
        """Serve the constitution's pointwise judge: each query's score is the log-odds that its response
        is good by the constitution's principles."""
        from cai.errors import ConfigError
        from cai.feedback.rewards import load_scorer

        if principles not in ("single", "ensemble"):
            raise ConfigError(f"--principles {principles!r} is not single or ensemble", where="command line",
                              fix="pass --principles single or --principles ensemble")
        limits = _limits(max_queue, max_texts, timeout)
        _check_access(host, api_key, insecure)
        scorer = load_scorer(model, constitution=constitution, principles=principles, dtype=dtype, seed=seed)
        _serve(scorer, host, port, batch_size, "judge", limits, api_key)

    app.add_typer(group, name="serve")


def _limits(max_queue: int, max_texts: int, timeout: float):
    from cai.errors import ConfigError
    from cai.feedback.serve import Limits

    try:
        return Limits(max_queue=max_queue, max_texts=max_texts, timeout=timeout)
    except ValueError as e:
        raise ConfigError(str(e), where="command line", fix="raise --max-queue or lower --max-texts") from None


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, localhost)."""
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _check_access(host: str, api_key: str | None, insecure: bool) -> None:
    """Refuse a non-loopback bind without a key, unless the user said --insecure (checked before any model loads)."""
    from cai.errors import ConfigError

    if api_key is not None and not api_key.strip():
        raise ConfigError("the API key is empty", where=f"--api-key or ${API_KEY_ENV}",
                          fix="set a long random key, e.g. `export CAI_SERVE_API_KEY=$(python -c "
                              "'import secrets; print(secrets.token_urlsafe(32))')`")
    if not api_key and not is_loopback(host) and not insecure:
        raise ConfigError(f"--host {host} would let anyone who can reach this machine query the model, and no "
                          "API key is set", where="command line",
                          fix=f"set ${API_KEY_ENV} (or --api-key), or pass --insecure to serve without a key")


def _serve(scorer, host: str, port: int, batch_size: int, kind: str, limits, api_key: str | None) -> None:
    import logging

    from cai.errors import ConfigError
    from cai.feedback.serve import RewardService, make_server
    from cai.logs import setup_console

    setup_console()
    log = logging.getLogger("cai.feedback.serve")
    try:
        server = make_server(RewardService(scorer, batch_size=batch_size, kind=kind, limits=limits), host, port,
                             api_key=api_key)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}", where="command line",
                          fix="choose a free --port (or stop whatever holds it)") from None
    if not api_key and not is_loopback(host):
        log.warning("listening on %s without an API key (--insecure): anyone who can reach it can query the model",
                    host)
    url_host = f"[{host}]" if ":" in host else host
    log.info("serving %s (%s) at http://%s:%d, OpenRLHF remote reward protocol: POST /get_reward, GET /health, "
             "GET /metrics; %s; queue %d texts, %d texts per request, timeout %g s", scorer.model_id, kind, url_host,
             server.server_address[1], "API key required (Authorization: Bearer)" if api_key else "no API key",
             limits.max_queue, limits.max_texts, limits.timeout)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()

"""``cai serve reward|judge``: a reward model or the judge behind HTTP, for OpenRLHF's ``--remote_rm_url``."""

from __future__ import annotations

from pathlib import Path

import typer

HOST_HELP = "address to bind; 127.0.0.1 keeps it on this machine (0.0.0.0: every interface, no authentication)"


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Serve a reward model or the judge over OpenRLHF's remote reward protocol "
                             "(POST /get_reward, GET /health).", no_args_is_help=True)

    @group.command("reward")
    def reward(
        model_dir: Path = typer.Argument(..., help="reward model directory from `cai reward`"),
        port: int = typer.Option(5000, help="TCP port"),
        host: str = typer.Option("127.0.0.1", help=HOST_HELP),
        batch_size: int = typer.Option(16, "--batch-size", min=1, help="texts scored per forward pass"),
    ) -> None:
        """Serve a reward model: each query's score is the model's scalar output."""
        from cai.errors import ModelError
        from cai.feedback.reward_judge import RewardJudge, is_reward_model_dir

        if not is_reward_model_dir(model_dir):
            raise ModelError(f"{model_dir} is not a reward model directory (no sequence-classification config.json)",
                             fix="train one with `cai reward PAIRS --out DIR`, or serve a chat model with "
                                 "`cai serve judge MODEL`")
        _serve(RewardJudge.load(model_dir, batch_size=batch_size), host, port, batch_size, "reward_model")

    @group.command("judge")
    def judge(
        model: str = typer.Argument("smollm2-135m", help="judge model: embedded name, local dir, .gguf, Hub id "
                                    "or openai:MODEL@URL"),
        constitution: str = typer.Option("general", help="constitution whose preference principles judge"),
        principles: str = typer.Option("ensemble", help="single (one principle per prompt, drawn by weight) | "
                                       "ensemble (several, averaged)"),
        port: int = typer.Option(5000, help="TCP port"),
        host: str = typer.Option("127.0.0.1", help=HOST_HELP),
        batch_size: int = typer.Option(16, "--batch-size", min=1, help="texts gathered per judge call"),
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
        scorer = load_scorer(model, constitution=constitution, principles=principles, dtype=dtype, seed=seed)
        _serve(scorer, host, port, batch_size, "judge")

    app.add_typer(group, name="serve")


def _serve(scorer, host: str, port: int, batch_size: int, kind: str) -> None:
    import ipaddress
    import logging

    from cai.errors import ConfigError
    from cai.feedback.serve import RewardService, make_server
    from cai.logs import setup_console

    setup_console()
    log = logging.getLogger("cai.feedback.serve")
    try:
        server = make_server(RewardService(scorer, batch_size=batch_size, kind=kind), host, port)
    except OSError as e:
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}", where="command line",
                          fix="choose a free --port (or stop whatever holds it)") from None
    try:
        public = not ipaddress.ip_address(host).is_loopback
    except ValueError:
        public = host != "localhost"
    if public:
        log.warning("listening on %s: anyone who can reach this machine can query the model", host)
    log.info("serving %s (%s) on http://%s:%d: POST /get_reward, GET /health", scorer.model_id, kind, host,
             server.server_address[1])
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()

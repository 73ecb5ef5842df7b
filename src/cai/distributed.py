"""Where this process stands in a multi-process run (``accelerate launch``, ``torchrun``, DeepSpeed).

The launchers tell each process its place through the environment (``RANK``, ``WORLD_SIZE``), so these
helpers read it without importing torch: a single-process run (the default) never touches
``torch.distributed``. Only the main process (rank 0) writes run files, logs and models; the others
train and wait. ``barrier`` is accelerate's ``wait_for_everyone`` (which sets the process group up on
first use); it returns at once when there is one process.
"""

from __future__ import annotations

import os


def world_size() -> int:
    """How many processes train together (1 outside a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def rank() -> int:
    """This process's global rank (0 outside a launcher)."""
    return int(os.environ.get("RANK", "0") or 0)


def is_main() -> bool:
    """True in the process that writes files: rank 0, or the only process."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process gets here (no-op in a single process)."""
    if world_size() > 1:
        from accelerate import PartialState

        PartialState().wait_for_everyone()


# ---- `accelerate launch --cpu --num_processes N cai <training command>` ----------------------------------

TRAINING_COMMANDS = ("sft", "reward", "dpo", "ppo", "grpo", "run")  # run: refuses stages that generate


def relaunch_for_accelerate_cpu(argv: list[str]) -> int | None:
    """Start the ``N`` training processes that ``accelerate launch --cpu --num_processes N`` asked for.

    Hand-written because the library stops short here: accelerate (1.15) starts multi-process CPU runs
    only through MPI (``--mpirun_hostfile``); without it, its launcher starts *one* process and sets
    ``MASTER_ADDR``/``MASTER_PORT``, so that process would train alone. When ``cai`` finds itself so
    launched for a training command (no ``RANK`` yet, the launcher's own command line asking for N > 1
    processes), it runs the same command under ``torch.distributed.run`` (torchrun) with N processes on
    that address and port; accelerate picks the ranks up from torchrun's environment (gloo on CPU).
    Returns the exit status, or ``None`` when nothing needed relaunching (the default path: one look at
    the environment).
    """
    import sys

    if os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("true", "1") or "RANK" in os.environ:
        return None
    if any(k in os.environ for k in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")):
        return None  # MPI started the processes already
    if len(argv) < 2 or argv[1] not in TRAINING_COMMANDS:
        return None
    n = _processes_asked_of_accelerate()
    if n <= 1:
        return None
    import subprocess

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(n),
           "--master_addr", os.environ.get("MASTER_ADDR", "127.0.0.1"),
           "--master_port", os.environ.get("MASTER_PORT", "29500"), "-m", "cai", *argv[1:]]
    return subprocess.call(cmd)


def _processes_asked_of_accelerate() -> int:
    """``--num_processes`` of the ``accelerate launch`` command that started this process (its parent),
    from its arguments or its config file; 1 when the parent is not such a command."""
    try:
        import psutil

        parent = psutil.Process(os.getppid()).cmdline()
    except Exception:  # no psutil, or the OS will not tell: treat as a single process
        return 1
    starts = [i + 1 for i, part in enumerate(parent)  # `accelerate launch`, accelerate-launch, -m accelerate...
              if (part == "launch" and i and "accelerate" in parent[i - 1])
              or part.endswith(("accelerate-launch", "accelerate.commands.launch"))]
    if not starts:
        return 1
    from accelerate.commands.launch import launch_command_parser

    args, _ = launch_command_parser().parse_known_args(parent[starts[0]:])
    if args.num_processes is None and args.config_file:
        from accelerate.commands.config.config_args import load_config_from_file

        args.num_processes = load_config_from_file(args.config_file).num_processes
    return int(args.num_processes or 1)

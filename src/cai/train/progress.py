"""Progress of a TRL/transformers training run: a rich bar of optimiser steps with the last loss, and each
logged row of metrics written to the run's ``cai.log`` (transformers' own bar prints them to the terminal
only). transformers has no rich progress callback, hence this small one."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def show_progress(trainer, desc: str):
    """Replace ``trainer``'s tqdm bar (or plain printer) by a rich bar named ``desc``; returns the trainer."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(_rich_callback(desc))
    return trainer


def _rich_callback(desc: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from transformers import TrainerCallback

    class RichProgress(TrainerCallback):
        def __init__(self):
            self.bar, self.task = None, None

        def on_train_begin(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                self.bar = Progress(TextColumn(desc), BarColumn(), MofNCompleteColumn(),
                                    TextColumn("{task.fields[stats]}"), TimeElapsedColumn())
                self.bar.start()
                self.task = self.bar.add_task(desc, total=state.max_steps, completed=state.global_step, stats="")

        def on_step_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.update(self.task, completed=state.global_step)

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            shown = {k: v for k, v in logs.items() if isinstance(v, (int, float))}
            log.info("%s step %d/%d: %s", desc, state.global_step, state.max_steps,
                     ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
            if self.bar is not None and "loss" in logs:
                self.bar.update(self.task, stats=f"loss {logs['loss']:.4f}")

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.stop()
                self.bar = None

    return RichProgress()

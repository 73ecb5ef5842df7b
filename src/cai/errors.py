"""User-facing errors: each says what went wrong, where (file, line or field) and how to fix it.

The CLI prints these without a traceback and exits with status 2.
"""

from __future__ import annotations


class CaiError(Exception):
    """An error caused by the user's input or environment, with a message fit to show as is."""

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        super().__init__(self.render())

    def render(self) -> str:
        head = f"{self.where}: {self.what}" if self.where else self.what
        return f"{head}\n  how to fix: {self.fix}" if self.fix else head


class ConfigError(CaiError):
    """A config, constitution or data file that does not validate."""


class ModelError(CaiError):
    """A model that cannot be found, loaded, or used for the asked purpose."""


class TrainingDiverged(CaiError):
    """Training produced NaN/inf or a KL/loss blow-up; the run stops with this message."""


class NumericsError(ModelError):
    """A backend produced NaN or inf where numbers leave it (scores, sampling): a kernel or dtype problem on this
    machine, not a property of the model's vocabulary."""

    def __init__(self, what: str, *, where: str | None = None):
        super().__init__(f"non-finite log-probs from the backend: {what}", where=where,
                         fix="run `cai env --check` and include its output in a bug report; `--dtype fp32` "
                             "(or `dtype: fp32` in a recipe) avoids the fast bf16 kernels")

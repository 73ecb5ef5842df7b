"""cai: the Constitutional AI toolkit.

Stages talk through files in a run directory; each stage is a plain function over typed records.
Heavy libraries (torch, transformers, trl) are imported lazily where they are used, so that
``import cai`` and ``cai --help`` stay fast. The Python API (``cai.api``) is exported here, each name
loaded on first use: ``cai.load_constitution``, ``cai.load_model``, ``cai.generate``, ``cai.critique_revise``,
``cai.label``, ``cai.train_sft``, ``cai.train_reward``, ``cai.train_dpo``, ``cai.refusal_rates``.
"""

__version__ = "0.1.0"

__all__ = ["load_constitution", "load_model", "generate", "critique_revise", "label", "train_sft", "train_reward",
           "train_dpo", "refusal_rates"]


def __getattr__(name: str):
    if name in __all__:
        from cai import api

        return getattr(api, name)
    raise AttributeError(f"module 'cai' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])

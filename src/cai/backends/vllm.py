"""vLLM in this process as a backend (optional extra ``cai[vllm]``, GPUs): spec ``vllm:MODEL``.

Generation and judge readings with vLLM's offline engine, prefix caching on (the judge's instructions and
the conversation a pair shares are computed once). It follows the served backend's conventions
(``cai.backends.served``), so the readings match a vLLM server's:

* ``generate``: every conversation in one ``LLM.chat`` call, each with its own seed from the run seed and
  the conversation (``request_seed``), so a draw does not depend on what else is batched;
* ``option_logprobs``: the answer prefix sent as the start of the assistant's turn and continued
  (``continue_final_message``), one token generated with its top log-probs; options' probabilities summed
  over their spellings and renormalised (``option_reading``).

Importing this module does not import vLLM; ``load`` does, and says how to install it when it is missing.
Not exercised by the CPU test suite (vLLM needs a GPU); its pure parts are the served backend's.
"""

from __future__ import annotations

from collections.abc import Sequence

from cai.backends.base import Completion, Conversation, SamplingParams
from cai.backends.served import TOP_LOGPROBS, option_reading, request_seed
from cai.errors import ModelError

PREFIX = "vllm:"


def is_vllm(spec: str) -> bool:
    return str(spec).startswith(PREFIX)


class VLLMBackend:
    """A ``vllm.LLM`` behind the backend contract (see the module docstring)."""

    def __init__(self, llm, model_id: str):
        self.llm, self.model_id = llm, model_id
        self.tokenizer = llm.get_tokenizer()

    @classmethod
    def load(cls, spec: str, *, dtype: str = "auto", gpu_memory_utilization: float = 0.85,
             tensor_parallel_size: int = 1, **_ignored) -> VLLMBackend:
        from cai.models import resolve

        try:
            import vllm
        except ImportError:
            raise ModelError("vLLM is not installed", fix="pip install 'cai[vllm]' on a machine with a GPU, or use "
                             "a vLLM server: openai:MODEL@http://host:port/v1") from None
        source = resolve(spec[len(PREFIX):])
        llm = vllm.LLM(model=source.path, dtype=dtype if dtype in ("auto", "bfloat16", "float16") else "auto",
                       enable_prefix_caching=True, gpu_memory_utilization=gpu_memory_utilization,
                       tensor_parallel_size=tensor_parallel_size, max_logprobs=TOP_LOGPROBS)
        return cls(llm, f"{PREFIX}{source.model_id}")

    def generate(self, conversations: Sequence[Conversation], params: SamplingParams, *,
                 desc: str = "generating") -> list[Completion]:
        from vllm import SamplingParams as VParams

        per_request = [VParams(max_tokens=params.max_new_tokens, temperature=params.temperature if params.do_sample
                               else 0.0, top_p=params.top_p, stop=list(params.stop) or None,
                               seed=request_seed(params.seed, list(c))) for c in conversations]
        outputs = self.llm.chat([list(c) for c in conversations], per_request, use_tqdm=False)
        completions = []
        for out in outputs:
            o = out.outputs[0]
            completions.append(Completion(text=o.text.strip(), prompt_tokens=len(out.prompt_token_ids or []),
                                          completion_tokens=len(o.token_ids), token_ids=list(o.token_ids),
                                          finish_reason="length" if o.finish_reason == "length" else "stop"))
        return completions

    def option_logprobs(self, conversations: Sequence[Conversation], prefix: str, options: Sequence[str]
                        ) -> list[list[float]]:
        from vllm import SamplingParams as VParams

        asks = [[*c, {"role": "assistant", "content": prefix}] for c in conversations]
        params = VParams(max_tokens=1, temperature=0.0, logprobs=TOP_LOGPROBS)
        outputs = self.llm.chat(asks, params, use_tqdm=False, add_generation_prompt=False,
                                continue_final_message=True)
        readings = []
        for out in outputs:
            first = (out.outputs[0].logprobs or [{}])[0]
            top = [{"token": lp.decoded_token or "", "logprob": lp.logprob} for lp in first.values()]
            readings.append(option_reading(top, options))
        return readings

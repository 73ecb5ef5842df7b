"""The pipeline's configuration: one strict pydantic model, read from a recipe YAML.

Unknown keys are errors (a typo fails in milliseconds, not two hours into a run). Each stage's options
are the stage's own options class, so there is one source for every value; the resolved config (with
all defaults filled in) is saved as ``config.resolved.yaml`` in the run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from cai.critique import CritiqueOptions
from cai.evaluation.evaluate import EvaluateOptions
from cai.evaluation.study_stage import StudyOptions
from cai.feedback.preferences import LabelConfig
from cai.train.dpo import DPOOptions
from cai.train.grpo import OnlineRLOptions
from cai.train.ppo import PPOOptions
from cai.train.reward import RewardOptions
from cai.train.sft import SFTOptions

Stage = Literal["critique", "sft", "label", "reward", "ppo", "grpo", "dpo", "studies", "evaluate"]
STAGES: tuple[str, ...] = ("critique", "sft", "label", "reward", "ppo", "grpo", "dpo", "studies", "evaluate")


class PromptSet(BaseModel):
    """A set of prompts: where they come from and which of them."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field("redteam", description=(
        "a file (.jsonl, .csv, .txt), a shipped set (redteam, helpful, mixed, optionally :train or :eval) or "
        "hf:owner/name"))
    limit: int | None = Field(None, ge=1, description="use only the first N prompts")
    column: str | None = Field(None, description="the prompt column of a CSV, JSONL or Hugging Face dataset")
    split: str = Field("train", description="the split of a shipped set or dataset when source names none")


class RunConfig(BaseModel):
    """A whole CAI run: which model, constitution and prompts, and each stage's options."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field("run", description="the run's name (recorded in the manifest and the report)")
    model: str = Field("smollm2-135m", description=(
        "the base model: embedded name, local directory, .gguf file, Hub id or openai:MODEL@URL"))
    constitution: str = Field("general", description=(
        "a shipped constitution (general, seed, redteam, customer-service) or a YAML file"))
    judge_model: str | None = Field(None, description="AI judge for labels; default: the base model")
    dtype: str = Field("auto", description="precision of generation: auto, fp32, bf16 or fp16")
    stages: list[Stage] = Field(default_factory=lambda: ["critique", "sft", "label", "reward", "ppo", "evaluate"],
                                description=(
        "the stages to run, in order (critique, sft, label, reward, ppo, grpo, dpo, studies, evaluate)"))
    rounds: int = Field(1, ge=1, description="alternating rounds of the SL stages then the RL stages, each "
                                             "from the policy the last round ended with (cai.rounds)")
    seeds: list[int] | None = Field(None, min_length=1, description=(
        "train the RL stages once per seed (and the SFT stage too with seed_sft); evaluate gives each model's "
        "figures per seed, their mean and spread"))
    seed_sft: bool = Field(False, description="with seeds: round 1's SFT once per seed too (else shared)")
    rl_iterations: int = Field(1, ge=1, description="RL stages per round, each on fresh pairs from the policy "
                                                    "the last one trained (iterative DPO)")
    critique_prompts: PromptSet = Field(default_factory=PromptSet, description=(
        "the prompts SL-CAI answers, critiques and revises (training split)"))
    helpful_prompts: PromptSet | None = Field(None, description=(
        "harmless prompts whose plain answers are mixed into the SFT data (e.g. {source: helpful})"))
    rl_prompts: PromptSet = Field(default_factory=lambda: PromptSet(source="mixed", split="rl"), description=(
        "the prompts the label, PPO and GRPO stages sample responses to: by default the shipped sets' rl split, "
        "which SFT's critique prompts and the evaluation never see"))
    critique: CritiqueOptions = Field(default_factory=CritiqueOptions, description=(
        "how the critique-revision loop runs"))
    sft: SFTOptions = Field(default_factory=SFTOptions, description="supervised fine-tuning on the revisions")
    label: LabelConfig = Field(default_factory=LabelConfig, description="sampling response pairs and labelling them")
    reward: RewardOptions = Field(default_factory=RewardOptions, description="the reward model")
    ppo: PPOOptions = Field(default_factory=PPOOptions, description="PPO against the reward model")
    grpo: OnlineRLOptions = Field(default_factory=OnlineRLOptions, description="TRL GRPO/RLOO (stage grpo)")
    dpo: DPOOptions = Field(default_factory=DPOOptions, description="DPO on the labelled pairs")
    evaluate: EvaluateOptions = Field(default_factory=EvaluateOptions, description=(
        "the held-out evaluation and the run's report"))
    studies: StudyOptions = Field(default_factory=StudyOptions, description="the studies stage")
    prices: dict[str, dict[Literal["prompt", "generated"], float]] = Field(
        default_factory=dict, description="money per million tokens by model spec, e.g. "
                                          "{'openai:gpt-4o@https://...': {'prompt': 2.5, 'generated': 10}}")

    @property
    def in_rounds(self) -> bool:
        """Whether the recipe asks for rounds, seeds or RL iterations (``cai.rounds.run_rounds``), not one pass."""
        return self.rounds > 1 or bool(self.seeds) or self.rl_iterations > 1


def load_config(path: str | Path) -> RunConfig:
    """Read and validate a recipe.

    Args:
        path: the recipe YAML file.

    Returns:
        The ``RunConfig``, with every default filled in.

    Raises:
        ConfigError: the file is missing, is not YAML, or has an unknown key or a bad value (the message
            names the file and the field).
    """
    import yaml
    from pydantic import ValidationError

    from cai.errors import ConfigError

    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {path} does not exist", fix="pass a YAML file such as recipes/quickstart.yaml")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"not valid YAML: {e}", where=str(path), fix="fix the YAML syntax") from None
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        raise ConfigError(problems, where=str(path),
                          fix="fix or remove those fields (see RunConfig in cai/config.py)") from None


def dump_config(config: RunConfig) -> str:
    import yaml

    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)

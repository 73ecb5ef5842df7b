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
    model_config = ConfigDict(extra="forbid")
    source: str = "redteam"
    limit: int | None = Field(None, ge=1)
    column: str | None = None
    split: str = "train"


class RunConfig(BaseModel):
    """A whole CAI run: which model, constitution and prompts, and each stage's options."""

    model_config = ConfigDict(extra="forbid")
    name: str = "run"
    model: str = "smollm2-135m"
    constitution: str = "general"
    judge_model: str | None = Field(None, description="AI judge for labels; default: the base model")
    dtype: str = "auto"
    stages: list[Stage] = Field(default_factory=lambda: ["critique", "sft", "label", "reward", "ppo", "evaluate"])
    rounds: int = Field(1, ge=1, description="alternating rounds of the SL stages then the RL stages, each "
                                             "from the policy the last round ended with (cai.rounds)")
    seeds: list[int] | None = Field(None, min_length=1, description=(
        "train the RL stages once per seed (and the SFT stage too with seed_sft); evaluate gives each model's "
        "figures per seed, their mean and spread"))
    seed_sft: bool = Field(False, description="with seeds: round 1's SFT once per seed too (else shared)")
    rl_iterations: int = Field(1, ge=1, description="RL stages per round, each on fresh pairs from the policy "
                                                    "the last one trained (iterative DPO)")
    critique_prompts: PromptSet = Field(default_factory=PromptSet)
    helpful_prompts: PromptSet | None = Field(None, description=(
        "harmless prompts whose plain answers are mixed into the SFT data (e.g. {source: helpful})"))
    rl_prompts: PromptSet = Field(default_factory=lambda: PromptSet(source="mixed", split="rl"), description=(
        "prompts of the judge-labelled, PPO and GRPO stages: by default the shipped sets' rl split, which SFT's "
        "critique prompts and the evaluation never see"))
    critique: CritiqueOptions = Field(default_factory=CritiqueOptions)
    sft: SFTOptions = Field(default_factory=SFTOptions)
    label: LabelConfig = Field(default_factory=LabelConfig)
    reward: RewardOptions = Field(default_factory=RewardOptions)
    ppo: PPOOptions = Field(default_factory=PPOOptions)
    grpo: OnlineRLOptions = Field(default_factory=OnlineRLOptions, description="TRL GRPO/RLOO (stage grpo)")
    dpo: DPOOptions = Field(default_factory=DPOOptions)
    evaluate: EvaluateOptions = Field(default_factory=EvaluateOptions)
    studies: StudyOptions = Field(default_factory=StudyOptions)
    prices: dict[str, dict[Literal["prompt", "generated"], float]] = Field(
        default_factory=dict, description="money per million tokens by model spec, e.g. "
                                          "{'openai:gpt-4o@https://...': {'prompt': 2.5, 'generated': 10}}")


def load_config(path: str | Path) -> RunConfig:
    """Read a recipe; errors name the file and the field."""
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

"""Training stages built on TRL/transformers: SL-CAI SFT, the soft-label reward model, DPO (and PPO).

Import what you need from the stage modules (``cai.train.sft.train_sft``, ``cai.train.reward.train_reward``,
``cai.train.reward.load_reward_model`` / ``score_responses``, ``cai.train.dpo.train_dpo``); importing this
package loads no heavy library.
"""

"""Evaluation: what a run changed, measured, studied and reported.

The refusal check on harmful and safe prompts (``refusals``, with ``replies`` for replies that carry no
answer), red-teaming in jailbreak templates (``redteam``), the pipeline's ``evaluate`` and ``studies``
stages (``evaluate``, ``study_stage``), the studies of ``cai compare`` and ``cai study`` (``compare``,
``round_quality``, ``principle_effect``, ``cai_vs_sft``, ``jailbreak_study`` with ``attacker`` and
``obfuscation``, ``helpfulness`` with ``win_rate`` and ``elo``). The report that gathers their files into
Markdown and HTML is the package ``cai.report``.
"""

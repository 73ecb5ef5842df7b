"""AI feedback: the constitution turned into preference labels and rewards, and the checks on its judge.

The RLAIF judge that reads a preference from option log-probs (``judge``, with ``calibration`` for its
biases), the preference data it labels (``preferences``) or that needs no judge (``constructed``), the
judge's agreement with human labels and its label-free probes (``agreement``, ``probes``), a trained reward
model as the judge (``reward_judge``), and either one as a reward for other RL engines (``rewards``), served
over HTTP (``serve``, with ``queries`` splitting the engines' texts back into conversations).
"""

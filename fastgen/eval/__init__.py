"""Evaluation, split by job: `models/` (networks that score images), `metrics/` (the math on their outputs),
`leaderboard/` (rows on disk, tables, plots, W&B) and `evaluator/` (the one run, `run_eval`, behind the `FewStepEval`
callback and `python -m fastgen.evaluate`). A model whose weights are missing returns None ("not computed") with
one warning naming the config key to set; no column is ever filled from random weights."""

"""The evaluation run that ties models, metrics and leaderboard together: `run_eval` samples every (method, steps)
row on fixed noises and scores it; the `FewStepEval` callback and `python -m fastgen.evaluate` both call it; the
DPM-Solver++ baseline rows, the points evaluation, sample grids, the latency pass and a method rebuilt from a
checkpoint live beside it."""

"""Evaluation: one code path (`run_eval`) behind the `FewStepEval` callback and `python -m fastgen.evaluate`.

Metrics are functions of features (fid.py); feature extractors (inception.py, clip_score.py, aesthetic.py,
digit_classifier.py) load lazily from local files and return None -- "not computed", with one warning
naming the config key to set -- when their weights are missing.
"""

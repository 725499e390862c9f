"""Metric math on features and samples: FID/KID, CLIP score, the points metrics (energy distance, kNN
precision/recall), the FID reference statistics, latency, and the protocol fingerprint a row carries; `MetricSuite`
(suite.py) loads the enabled ones once and scores a run's samples."""

"""Exact metrics of point sets (pure functions of tensors [N, D]): energy distance, kNN precision and recall,
kNN prompt accuracy.

- `energy_distance(x, y)` = 2·E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖ (Székely & Rizzo 2013, "Energy statistics", eq. 2.1:
  the squared energy distance D²), estimated by the V-statistic (means over all pairs, the zero diagonal
  included): 0 for identical sets, ≥ 0 always, and in 1-D the square of `scipy.stats.energy_distance`.
- `precision_recall(real, fake, k)` (Kynkäänniemi et al. 2019, "Improved precision and recall metric", Sec. 2):
  a set's manifold is the union of balls around its points, each with the radius of the distance to its k-th
  nearest neighbour in the set (itself excluded); precision = share of fake points inside the real manifold,
  recall = share of real points inside the fake manifold.
- `knn_predict(x_ref, y_ref, queries, k)`: the majority label among the k nearest reference points (a tie goes to
  the tied label with the nearest neighbour); prompt accuracy is the share of samples predicted as their prompt.
Distances are Euclidean, computed in float64, queries in chunks (memory O(chunk · N)).
"""

from __future__ import annotations

import torch

CHUNK = 4096


def _f64(x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.ndim != 2:
        raise ValueError(f"point sets are [N, D] tensors, got shape {tuple(x.shape)}")
    return x.detach().to("cpu", torch.float64)


def _mean_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    total = sum(torch.cdist(a[i:i + CHUNK], b).sum() for i in range(0, len(a), CHUNK))
    return total / (len(a) * len(b))


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Squared energy distance D²(x, y) between two point sets (V-statistic; 0 iff the sets' empirical laws agree)."""
    x, y = _f64(x), _f64(y)
    if not len(x) or not len(y):
        raise ValueError("energy_distance needs two non-empty point sets")
    return float(2 * _mean_distance(x, y) - _mean_distance(x, x) - _mean_distance(y, y))


def knn_radii(x: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Distance of each point of x to its k-th nearest neighbour in x (itself excluded): [N]."""
    x = _f64(x)
    if not 1 <= k < len(x):
        raise ValueError(f"k={k} needs at least k + 1 = {k + 1} points, got {len(x)}")
    return torch.cat([torch.cdist(x[i:i + CHUNK], x).kthvalue(k + 1, dim=1).values for i in range(0, len(x), CHUNK)])


def coverage(queries: torch.Tensor, support: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """For each query, whether it lies in some ball (support point, radius): bool [N_queries]."""
    queries, support = _f64(queries), _f64(support)
    radii = radii.to(torch.float64)
    return torch.cat([(torch.cdist(queries[i:i + CHUNK], support) <= radii[None]).any(dim=1)
                      for i in range(0, len(queries), CHUNK)])


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> tuple[float, float]:
    """kNN (precision, recall) of `fake` against `real` (Kynkäänniemi et al. 2019)."""
    precision = coverage(fake, real, knn_radii(real, k)).double().mean()
    recall = coverage(real, fake, knn_radii(fake, k)).double().mean()
    return float(precision), float(recall)


def knn_predict(x_ref: torch.Tensor, y_ref: torch.Tensor, queries: torch.Tensor, k: int = 3) -> torch.Tensor:
    """Majority label of the k nearest reference points of each query: long [N_queries]."""
    x_ref, queries = _f64(x_ref), _f64(queries)
    y_ref = torch.as_tensor(y_ref, dtype=torch.long)
    if not 1 <= k <= len(x_ref):
        raise ValueError(f"k={k} must be in [1, {len(x_ref)}] (the number of reference points)")
    num_labels = int(y_ref.max()) + 1
    ranks = torch.arange(k)
    out = []
    for i in range(0, len(queries), CHUNK):
        dist = torch.cdist(queries[i:i + CHUNK], x_ref)
        labels = y_ref[dist.topk(k, dim=1, largest=False, sorted=True).indices]  # [n, k], nearest first
        counts = torch.zeros(len(labels), num_labels, dtype=torch.long).scatter_add_(1, labels, torch.ones_like(labels))
        first = torch.full_like(counts, k).scatter_reduce_(1, labels, ranks.expand_as(labels), "amin")
        out.append((counts * (k + 1) - first).argmax(dim=1))  # most votes; ties: the label met first
    return torch.cat(out)

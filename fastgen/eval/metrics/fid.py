"""FID and KID as functions of Inception features / feature statistics (EDM2's `calculate_metrics_from_stats`).

FID (Heusel et al. 2017, arXiv:1706.08500, eq. 6):  ||mu_1 - mu_2||^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^{1/2}).
    Tr (S_1 S_2)^{1/2} is computed as the sum of square roots of the eigenvalues of the symmetric PSD matrix
    S_1^{1/2} S_2 S_1^{1/2} (same spectrum as S_1 S_2), in float64. From features with fewer samples than
    dimensions (500 images, 2048-d) `fid_from_features` uses the exact low-rank form: with centred features
    A_k [n_k, D] and S_k = A_k^T A_k / (n_k - 1), Tr (S_1 S_2)^{1/2} = ||A_1 A_2^T||_* / sqrt((n_1 - 1)(n_2 - 1))
    (the nonzero spectrum of S_1 S_2 is that of M M^T / c with M = A_1 A_2^T), an n_1 x n_2 SVD.
KID (Binkowski et al. 2018, arXiv:1801.01401): the unbiased MMD^2 with the cubic polynomial kernel
    k(x, y) = (x.y / d + 1)^3, averaged over `subsets` random subsets of `subset_size` features drawn from each
    set, reported as (mean, std); the same estimator and subset sampling as torchmetrics' KernelInceptionDistance
    (when both sets are no larger than `subset_size`, the whole sets are compared once).
Both are biased at small sample counts: rows are comparable only at equal `num_samples`.
"""

import numpy as np
import torch


def feature_stats(features):
    """(mu [D], sigma [D, D]) in float64 of features [N, D]; sigma is the unbiased (N - 1) covariance."""
    features = _as_float64(features)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"feature_stats needs features [N >= 2, D], got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrt_psd(matrix):
    """Symmetric square root of a symmetric positive semi-definite matrix (negative eigenvalues clipped to 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(values.clip(min=0))) @ vectors.T


def fid_from_stats(mu1, sigma1, mu2, sigma2):
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (module docstring)."""
    mu1, mu2, sigma1, sigma2 = (np.asarray(a, dtype=np.float64) for a in (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics of different feature sizes: {mu1.shape} vs {mu2.shape}")
    root1 = _sqrt_psd(sigma1)
    cross = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    trace_sqrt = np.sqrt(cross.clip(min=0)).sum()
    return float(np.square(mu1 - mu2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)


def _as_float64(features):
    return np.asarray(features.cpu() if torch.is_tensor(features) else features, dtype=np.float64)


def fid_from_features(features1, features2):
    """FID of two feature sets [n_k, D]; equal to fid_from_stats of their feature_stats (module docstring)."""
    f1, f2 = _as_float64(features1), _as_float64(features2)
    if min(len(f1), len(f2)) > f1.shape[1]:
        return fid_from_stats(*feature_stats(f1), *feature_stats(f2))
    a1, a2 = f1 - f1.mean(axis=0), f2 - f2.mean(axis=0)
    c1, c2 = len(f1) - 1, len(f2) - 1
    trace_sqrt = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum() / np.sqrt(c1 * c2)
    mean_term = np.square(f1.mean(axis=0) - f2.mean(axis=0)).sum()
    return float(mean_term + np.square(a1).sum() / c1 + np.square(a2).sum() / c2 - 2 * trace_sqrt)


def polynomial_mmd(x, y, degree=3, gamma=None, coef=1.0):
    """Unbiased MMD^2 of feature sets x, y [m, D] (equal m) under k(a, b) = (gamma a.b + coef)^degree."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    k_xx, k_yy, k_xy = ((a @ b.T * gamma + coef) ** degree for a, b in ((x, x), (y, y), (x, y)))
    m = x.shape[0]
    within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
    return within - 2 * k_xy.sum() / m**2


def kid_from_features(real, fake, subsets=100, subset_size=1000, generator=None):
    """(mean, std) of KID over `subsets` random subsets of min(subset_size, N) features from each set."""
    real, fake = (torch.as_tensor(np.asarray(f.cpu() if torch.is_tensor(f) else f), dtype=torch.float64)
                  for f in (real, fake))
    size = min(subset_size, len(real), len(fake))
    if size < 2:
        raise ValueError(f"KID needs at least 2 features per set, got {len(real)} real and {len(fake)} generated")
    if size == len(real) == len(fake):
        subsets = 1  # every subset would be the whole set: one deterministic estimate (std 0)
    scores = []
    for _ in range(subsets):
        real_subset = real[torch.randperm(len(real), generator=generator)[:size]]
        fake_subset = fake[torch.randperm(len(fake), generator=generator)[:size]]
        scores.append(polynomial_mmd(real_subset, fake_subset))
    scores = torch.stack(scores)
    return float(scores.mean()), float(scores.std(unbiased=False))

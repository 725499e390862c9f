"""`PointsMetricSuite`: the evaluation of the points testbed (`eval=points`, `eval.metrics: points`), with the
interface of `MetricSuite` (load / available / score / summarise / fingerprint), so `run_eval` runs it unchanged
but for three marked branches (float samples instead of uint8 pixels, the floor row, the scatter plot).

Per-sample outputs are the samples themselves and their prompt's label; the summary of one step count is
- `energy_distance`: per prompt, the squared energy distance between its samples and its held-out points, averaged
  over prompts (points_metrics.energy_distance);
- `knn_precision`, `knn_recall`: kNN precision and recall (k = `eval.points.k`, Kynkäänniemi et al. 2019) per prompt against
  its held-out points, averaged over prompts — mode coverage of each prompt's own distribution;
- `prompt_accuracy`: the share of samples a kNN classifier (k = `eval.points.k`) fitted on all held-out points
  assigns to their prompt's label.
(The leaderboard's `precision` column is the numeric precision a row was computed in, hence the `knn_` names.)
The floor row (`real_data`) scores training points — per prompt as many as the evaluation draws — the same way.
Scatter plots: every sample coloured by prompt, then one panel per prompt over its held-out points (grey); points
of more than two dimensions are shown in the plane of the held-out set's first two principal components.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from fastgen.core.files import atomic_path
from fastgen.eval.metrics.points import energy_distance, knn_predict, precision_recall

POINTS_COLUMNS = ("energy_distance", "knn_precision", "knn_recall", "prompt_accuracy")
MAX_PROMPT_PANELS = 8


@dataclass
class PointsMetricSuite:
    settings: object
    datamodule: object
    reference: torch.Tensor  # held-out points [M, D]
    reference_labels: torch.Tensor  # [M]
    projection: torch.Tensor | None = None  # [D, 2] for D > 2 (principal axes of the held-out points)
    center: torch.Tensor | None = None
    digits: None = None  # (MetricSuite's digit classifier: none here)
    sha256: str = field(default="")

    @classmethod
    def load(cls, settings, datamodule, device="cpu"):
        from fastgen.data.points import PointsDataModule

        if not isinstance(datamodule, PointsDataModule):
            raise ValueError(f"eval.metrics=points scores points: it needs data=points, not {type(datamodule).__name__}")
        x, labels = datamodule.points("heldout")
        digest = hashlib.sha256(x.numpy().tobytes() + labels.numpy().tobytes()
                                + "\n".join(datamodule.prompts).encode()).hexdigest()
        suite = cls(settings, datamodule, x, labels, sha256=digest)
        if x.shape[1] > 2:
            suite.center = x.mean(dim=0)
            _, _, v = torch.linalg.svd(x.double() - suite.center.double(), full_matrices=False)
            axes = v[:2].T.float()  # [D, 2]; each axis' sign fixed so its largest loading is positive
            suite.projection = axes * axes.gather(0, axes.abs().argmax(0, keepdim=True)).sign()
        return suite

    @property
    def k(self) -> int:
        return int(self.settings.points.k)

    @property
    def available(self):
        return ["points", "labels"]

    def score(self, samples, prompts, names=None):
        """{"points": float samples [n, D], "labels": their prompts' labels [n]} on CPU."""
        return {"points": samples.detach().float().cpu(), "labels": self.datamodule.labels_of(prompts)}

    def summarise(self, per_sample):
        return self.metrics(per_sample["points"], per_sample["labels"])

    def metrics(self, points: torch.Tensor, labels: torch.Tensor) -> dict:
        """The four columns for samples `points` of prompt labels `labels`."""
        eds, precisions, recalls = [], [], []
        for label in labels.unique().tolist():
            fake, real = points[labels == label], self.reference[self.reference_labels == label]
            if len(fake) <= self.k or len(real) <= self.k:
                raise ValueError(f"prompt {self.datamodule.prompts[label]!r} has {len(fake)} samples and {len(real)} "
                                 f"held-out points; kNN precision/recall with eval.points.k={self.k} need more than "
                                 "k of each: raise eval.num_samples or lower eval.points.k")
            eds.append(energy_distance(fake, real))
            p, r = precision_recall(real, fake, self.k)
            precisions.append(p)
            recalls.append(r)
        predicted = knn_predict(self.reference, self.reference_labels, points, self.k)
        mean = lambda v: sum(v) / len(v)  # noqa: E731
        return {"energy_distance": mean(eds), "knn_precision": mean(precisions), "knn_recall": mean(recalls),
                "prompt_accuracy": float((predicted == labels).double().mean())}

    def real_data_metrics(self, prompts) -> dict:
        """The floor: for each prompt, as many *training* points of its label as `prompts` holds, scored as samples."""
        x, labels = self.datamodule.points("train")
        wanted = self.datamodule.labels_of(prompts)
        chosen = []
        for label in wanted.unique().tolist():
            rows = torch.nonzero(labels == label).flatten()[: int((wanted == label).sum())]
            chosen.append(rows)
        rows = torch.cat(chosen)
        return self.metrics(x[rows], labels[rows])

    def fingerprint(self):
        return {"extractor": f"points:knn_k{self.k}", "extractor_sha256": "",
                "reference": f"{self.datamodule.name}:heldout:{len(self.reference)}", "reference_sha256": self.sha256}

    # -- scatter plots --------------------------------------------------------------------------------------
    def plane(self, points: torch.Tensor) -> torch.Tensor:
        """Points in the plotting plane: themselves in 2-D, else their principal-axis coordinates."""
        points = points.float()
        if self.projection is None:
            return points if points.shape[1] == 2 else torch.cat([points, torch.zeros(len(points), 1)], 1)
        return (points - self.center) @ self.projection

    def save_scatter(self, points: torch.Tensor, prompts, path, title: str = "") -> Path:
        """A PNG of the samples (coloured by prompt), then one panel per prompt over its held-out points; atomic."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        labels = self.datamodule.labels_of(prompts)
        xy, ref = self.plane(points).numpy(), self.plane(self.reference).numpy()
        lo, hi = ref.min(0), ref.max(0)
        pad = 0.25 * (hi - lo) + 1e-6
        lo, hi = lo - pad, hi + pad
        shown = labels.unique().tolist()[:MAX_PROMPT_PANELS]
        fig, axes = plt.subplots(1, 1 + len(shown), figsize=(3.2 * (1 + len(shown)), 3.4), squeeze=False)
        colours = plt.get_cmap("tab10")
        outside = int(((xy < lo) | (xy > hi)).any(1).sum())
        panels = [(axes[0, 0], None, f"{title}\nall prompts" + (f" ({outside} outside)" if outside else ""))]
        panels += [(axes[0, i + 1], label, self.datamodule.prompts[label]) for i, label in enumerate(shown)]
        for ax, label, name in panels:
            if label is None:
                for other in labels.unique().tolist():
                    mask = (labels == other).numpy()
                    ax.scatter(xy[mask, 0], xy[mask, 1], s=2, color=colours(other % 10), alpha=0.6)
            else:
                real = (self.reference_labels == label).numpy()
                ax.scatter(ref[real, 0], ref[real, 1], s=2, color="0.75")
                mask = (labels == label).numpy()
                ax.scatter(xy[mask, 0], xy[mask, 1], s=2, color=colours(label % 10), alpha=0.6)
            ax.set_xlim(lo[0], hi[0])
            ax.set_ylim(lo[1], hi[1])
            ax.set_title(name, fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
            if self.projection is not None:
                ax.set_xlabel("held-out PC 1", fontsize=7)
                ax.set_ylabel("held-out PC 2", fontsize=7)
        fig.tight_layout()
        with atomic_path(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
        return Path(path)

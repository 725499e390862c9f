"""W&B for the evaluation: a readiness check before training, and the dashboard pieces of each evaluation.

Logged per evaluation (step = trainer.global_step): the scalar metrics `eval/<metric>@<N>step` (through every
logger, by the callback), and with a WandbLogger also `eval/leaderboard` (a wandb.Table of the rows),
`eval/samples@<N>step` (the sample grids as wandb.Image) and `eval/<metric>_vs_steps` (line plots of each
metric against steps), so a dashboard compares step counts across runs. Offline (`WANDB_MODE=offline`)
everything lands in `<save_dir>/wandb/offline-run-*`; `wandb sync` uploads it later.
"""

import netrc
import os
from urllib.parse import urlparse

OFFLINE_MODES = ("offline", "dryrun", "disabled")
PLOTTED_METRICS = ("fid", "kid", "clip_score", "aesthetic_score", "prompt_accuracy", "ms_per_image")


class WandbNotReadyError(ValueError):
    """Online W&B logging was asked for but no credentials are available."""


def _netrc_has_host(host):
    path = os.environ.get("NETRC", os.path.expanduser("~/.netrc"))
    try:
        return os.path.isfile(path) and netrc.netrc(path).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def check_wandb_ready(offline=False):
    """Raise WandbNotReadyError (with what to do) if W&B would need an API key that is not configured.

    Ready when offline (argument or WANDB_MODE offline/dryrun/disabled), or with WANDB_API_KEY,
    WANDB_IDENTITY_TOKEN_FILE, or a ~/.netrc (or $NETRC) entry for the W&B host (what `wandb login` writes).
    """
    if offline or os.environ.get("WANDB_MODE", "").lower() in OFFLINE_MODES:
        return
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    if _netrc_has_host(host):
        return
    raise WandbNotReadyError(
        f"logger=wandb is online but no W&B API key was found (WANDB_API_KEY, ~/.netrc entry for {host}). "
        "Run `wandb login`, export WANDB_API_KEY, or log offline with WANDB_MODE=offline "
        "(then upload with `wandb sync <run dir>/wandb/offline-run-*`)."
    )


def scalar_metrics(rows):
    """{"eval/fid@1step": ..., "eval/clip@4step": ...} of the filled metrics of each row."""
    names = {"fid": "fid", "kid": "kid", "clip_score": "clip", "aesthetic_score": "aesthetic",
             "prompt_accuracy": "prompt_accuracy", "ms_per_image": "ms_per_image", "images_per_s": "images_per_s",
             "peak_mem_mb": "peak_mem_mb"}
    return {f"eval/{short}@{row['steps']}step": float(row[column])
            for row in rows if row.get("steps") is not None
            for column, short in names.items() if row.get(column) is not None}


def log_to_wandb(logger, rows, step):
    """The table, grids and metric-vs-steps line plots of one evaluation, through a Lightning WandbLogger."""
    import pandas as pd
    import wandb

    payload = {"eval/leaderboard": wandb.Table(dataframe=pd.DataFrame(rows).astype(str))}
    for row in rows:
        if row.get("grid"):
            payload[f"eval/samples@{row['steps']}step"] = wandb.Image(row["grid"], caption=f"{row['method']} "
                                                                                           f"{row['steps']} steps")
    for metric in PLOTTED_METRICS:
        points = [[row["steps"], float(row[metric])] for row in rows if row.get(metric) is not None]
        if points:
            table = wandb.Table(data=points, columns=["steps", metric])
            payload[f"eval/{metric}_vs_steps"] = wandb.plot.line(table, "steps", metric, title=f"{metric} vs steps")
    logger.experiment.log({**payload, "trainer/global_step": step})

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


VERIFY_TIMEOUT_S = 10


def _netrc_key(host):
    path = os.environ.get("NETRC", os.path.expanduser("~/.netrc"))
    try:
        entry = netrc.netrc(path).authenticators(host) if os.path.isfile(path) else None
    except (netrc.NetrcParseError, OSError):
        return None
    return entry[2] if entry else None


def _key_format_problem(key):
    """wandb's own check of an API key's form (None: well-formed), offline and instant."""
    try:
        from wandb.sdk.lib.wbauth.validation import check_api_key
    except ImportError:  # another wandb layout: the same rule (40+ word characters after an optional prefix)
        secret = key.split("-", 1)[-1]
        return None if len(secret) >= 40 and secret.replace("-", "_").isidentifier() else "not a W&B API key."
    return check_api_key(key)


def _server_rejects(key, base_url):
    """None if the W&B server accepts `key`, else why not (it did not answer within VERIFY_TIMEOUT_S included)."""
    try:
        from wandb.sdk.lib.wbauth.host_url import HostUrl
        from wandb.sdk.lib.wbauth.validation import check_api_key_validity
    except ImportError:
        return None  # no way to ask: wandb.init will
    previous = os.environ.get("WANDB_HTTP_TIMEOUT")
    os.environ["WANDB_HTTP_TIMEOUT"] = str(VERIFY_TIMEOUT_S)
    try:
        return check_api_key_validity(host=HostUrl(base_url), api_key=key)
    except Exception as e:
        return str(e).splitlines()[0]
    finally:
        if previous is None:
            os.environ.pop("WANDB_HTTP_TIMEOUT", None)
        else:
            os.environ["WANDB_HTTP_TIMEOUT"] = previous


def check_wandb_ready(offline=False, verify=False):
    """Raise WandbNotReadyError (one line: what was wrong, what to do) if online W&B logging cannot start.

    Ready when offline (argument or WANDB_MODE offline/dryrun/disabled), with WANDB_IDENTITY_TOKEN_FILE, or with an
    API key (WANDB_API_KEY, or the ~/.netrc / $NETRC entry `wandb login` writes) of the right form; `verify` also
    asks the server, waiting at most VERIFY_TIMEOUT_S (wandb.init itself retries for minutes, then tracebacks).
    """
    if offline or os.environ.get("WANDB_MODE", "").lower() in OFFLINE_MODES:
        return
    if os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return
    offline_hint = ("or log offline with WANDB_MODE=offline (then upload with "
                    "`wandb sync <run dir>/wandb/offline-run-*`)")
    base_url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    host = urlparse(base_url).hostname
    key, source = os.environ.get("WANDB_API_KEY"), "WANDB_API_KEY"
    if not key:
        key, source = _netrc_key(host), f"the ~/.netrc entry for {host}"
    if not key:
        raise WandbNotReadyError(
            f"logger=wandb is online but no W&B API key was found (WANDB_API_KEY, ~/.netrc entry for {host}). "
            f"Run `wandb login`, export WANDB_API_KEY, {offline_hint}."
        )
    problem = _key_format_problem(key)
    if problem:
        raise WandbNotReadyError(f"the W&B API key in {source} is malformed: {problem} Copy it again from your W&B "
                                 f"settings (`wandb login --relogin`), {offline_hint}.")
    if verify and (problem := _server_rejects(key, base_url)):
        raise WandbNotReadyError(f"W&B did not accept the API key in {source} within {VERIFY_TIMEOUT_S} s ({problem}). "
                                 f"Check the key (`wandb login --relogin`) and the network, {offline_hint}.")


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

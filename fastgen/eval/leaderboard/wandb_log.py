"""W&B: a readiness check before training, the dashboard pieces of each evaluation, and a whole leaderboard.

Logged per evaluation (step = trainer.global_step): the scalar metrics `eval/<metric>@<N>step` (through every
logger, by the callback), and with a WandbLogger also `eval/leaderboard` (a wandb.Table of the rows),
`eval/samples@<N>step` (the sample grids as wandb.Image) and `eval/<metric>_vs_steps` (line plots of each
metric against steps) -- one run's own step counts.

`log_leaderboard` (`python -m fastgen.leaderboard FILE.csv --wandb`) compares methods: one W&B run (job type
`leaderboard`) holding, per evaluation protocol (keys prefixed `<protocol>/` when the CSV holds several),
`summary` (the grouped table, a wandb.Table), `rows` (the CSV's rows), `<metric>_vs_steps` and
`<metric>_vs_nfe` (one line per series, the data floor as a flat line: wandb.plot.line_series) and
`samples/<series>@<N>step` (the selected rows' sample grids, where the files exist). Offline
(`WANDB_MODE=offline`) everything lands in `<dir>/wandb/offline-run-*`; `wandb sync` uploads it later.
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
    """{"eval/fid@1step": ..., "eval/clip@4step": ...} of the filled metrics of each row; a row labelled
    `<method>@<variant>` (e.g. `tscd@final`) under "eval/<variant>/"."""
    names = {"fid": "fid", "kid": "kid", "clip_score": "clip", "aesthetic_score": "aesthetic",
             "prompt_accuracy": "prompt_accuracy", "digit_reward": "digit_reward", "imagereward": "imagereward",
             "hpsv2": "hpsv2", "pickscore": "pickscore", "ms_per_image": "ms_per_image", "images_per_s": "images_per_s",
             "peak_mem_mb": "peak_mem_mb"}

    def prefix(row):
        variant = str(row.get("method") or "").partition("@")[2]
        return f"eval/{variant}/" if variant else "eval/"

    return {f"{prefix(row)}{short}@{row['steps']}step": float(row[column])
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


def _line_series(summary, metric, x):
    """wandb.plot.line_series of one metric of a one-protocol summary against `x`, or None if never filled."""
    import wandb

    from fastgen.eval.leaderboard.table import REAL, REAL_DATA, series_order

    sampled = summary[(summary["steps"] != REAL)].dropna(subset=[metric])
    if sampled.empty:
        return None
    xs, ys, keys = [], [], []
    for label in series_order(summary):
        rows = sampled[sampled["series"] == label].sort_values(x, key=lambda s: s.astype(int))
        if len(rows):
            xs.append([int(v) for v in rows[x]])
            ys.append([float(v) for v in rows[metric]])
            keys.append(label)
    floor = summary[(summary["method"] == REAL_DATA)][metric].dropna()
    if len(floor):
        span = [int(sampled[x].astype(int).min()), int(sampled[x].astype(int).max())]
        xs.append(span)
        ys.append([float(floor.iloc[0])] * 2)
        keys.append("real data")
    xname = "steps" if x == "steps" else "NFE"
    return wandb.plot.line_series(xs=xs, ys=ys, keys=keys, title=f"{metric} vs {xname}", xname=xname)


def _table(frame):
    import wandb

    return wandb.Table(dataframe=frame.astype(str))


def log_leaderboard(summary, frame, csv_path, project=None, name=None, save_dir=None):
    """Log a leaderboard's grouped tables, line charts and sample grids as one W&B run; returns the finished run.

    `summary` is `leaderboard_table.summarise(frame)`; `frame` the CSV's rows (`read_leaderboard`)."""
    import wandb

    from fastgen.eval.metrics.fingerprint import protocol_id
    from fastgen.eval.leaderboard.table import SUMMARY_METRICS, protocols

    check_wandb_ready()
    found = protocols(summary)
    run = wandb.init(project=project or os.environ.get("WANDB_PROJECT", "fastgen"), job_type="leaderboard",
                     name=name or f"leaderboard-{os.path.splitext(os.path.basename(str(csv_path)))[0]}",
                     dir=str(save_dir) if save_dir else None,
                     config={"csv": str(csv_path), "selection": str(summary["selection"].iloc[0]),
                             "protocols": dict(found)})
    row_protocols = [protocol_id(r) for r in frame.to_dict("records")]
    payload = {}
    for pid, _ in found:
        prefix = f"{pid}/" if len(found) > 1 else ""
        part = summary[summary["protocol"] == pid]
        columns = ["series", "method", "experiment", "guidance", "precision", "steps", "nfe", "n_seeds",
                   *(c for m in SUMMARY_METRICS for c in (m, f"{m}_std"))]
        payload[f"{prefix}summary"] = _table(part[columns])
        payload[f"{prefix}rows"] = _table(frame[[p == pid for p in row_protocols]])
        for metric in SUMMARY_METRICS:
            for x in ("steps", "nfe"):
                chart = _line_series(part, metric, x)
                if chart is not None:
                    payload[f"{prefix}{metric}_vs_{x}"] = chart
        for _, row in part.iterrows():
            for k, grid in enumerate(g for g in row["grids"] if os.path.isfile(g)):
                key = f"{prefix}samples/{row['series']}@{row['steps']}step" + (f"/{k}" if k else "")
                payload[key] = wandb.Image(grid, caption=f"{row['series']}, {row['steps']} steps")
    run.log(payload)
    run.finish()
    return run

#!/usr/bin/env bash
# Train (or resume) the zero-terminal-SNR MNIST teacher in the background, at the lowest CPU priority, so it only
# uses cores nothing else wants (one torch thread: two spin-waiting threads at nice 19 crawl on a busy machine). Its run folder lives outside the work tree (which a new session lays anew):
#   FASTGEN_TEACHER_RUNS (default ~/fastgen_runs)/teacher_mnist/{checkpoints,logs,teacher}
# Run it again, in any session, to continue from the last checkpoint; `tail -f` the log it names.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${FASTGEN_TEACHER_RUNS:-$HOME/fastgen_runs}
mkdir -p "$runs"
log="$runs/teacher_mnist.log"
python=python
[ -x .venv/bin/python ] && python=.venv/bin/python  # the README's install; a bare `python` may lack the packages
OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 WANDB_MODE=offline nohup nice -n 19 \
  "$python" -m fastgen.fit experiment=teacher_mnist paths.runs_dir="$runs" ckpt_path=last callbacks.progress.refresh_rate=200 \
  >> "$log" 2>&1 &
echo "teacher training: pid $!, log $log"

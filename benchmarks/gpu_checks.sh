#!/usr/bin/env bash
# The GPU checks in one run, each stage under its own time limit, logs under $OUT:
#   1. training step of UFOGen at SD1.5 size (random init, 512 px, bf16-mixed, batch 8): ms, images/s, peak memory,
#      with and without gradient checkpointing;
#   2. sampling at SD1.5 size (bf16): 1/2/4/8-step UFOGen and 25-step DPM-Solver++ with CFG, batch 1 and 8,
#      eager and channels-last;
#   3. every method for a few steps under `trainer.strategy=fsdp` (FSDP2; tiny backbone, one GPU; Lightning's
#      FSDP1 failed here for the two-phase methods on 2026-12-04, benchmarks/RESULTS.md);
#   4. training step of the other methods at SD1.5 size;
#   5. sampling as in 2 with torch.compile (compiling the UNet and VAE decoder took over 130 s on an H200).
#     OUT=gpu-logs bash benchmarks/gpu_checks.sh            (MODEL=tiny_latent RES=32 ACCELERATOR=cpu: CPU dry run)
#     STAGES="train_others sample_compile" bash benchmarks/gpu_checks.sh     (a subset: the stage names below)
# All stages together need about 15 minutes; a device lease of 10 minutes per call needs two calls.
set -u
out=${OUT:-gpu-logs}
model=${MODEL:-sd15_random}
res=${RES:-512}
py=${PYTHON:-python3}
accelerator=${ACCELERATOR:-gpu}
mkdir -p "$out"
tmp=$(mktemp -d)
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
threads=$(nproc)
stages=${STAGES:-train_ufogen train_ufogen_no_checkpointing sample_eager fsdp train_others sample_compile}

stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, log to $out/NAME.log, report the exit status
    local name=$1 limit=$2
    shift 2
    [[ " $stages " == *" $name "* ]] || return 0
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    echo "stage $name: exit $? after $((SECONDS - start)) s" | tee -a "$out/summary.txt"
}

(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv; $py -c "import torch; print(torch.__version__)") \
    >"$out/summary.txt" 2>&1

sd15=("model=$model" "data.resolution=$res" "data.num_workers=8")
stage train_ufogen 100 $py benchmarks/speed_training.py --experiments ufogen_sd15 --batch-size 8 --steps 6 \
    --warmup 2 --threads "$threads" --random-images 64 --overrides "${sd15[@]}"
stage train_ufogen_no_checkpointing 80 $py benchmarks/speed_training.py --experiments ufogen_sd15 --batch-size 8 \
    --steps 6 --warmup 2 --threads "$threads" --random-images 64 \
    --overrides "${sd15[@]}" model.gradient_checkpointing=false

stage sample_eager 180 $py benchmarks/speed_sampling.py --model "$model" --dtype bf16 --methods ufogen \
    --threads "$threads" --batch-sizes 1 8 --variants eager channels_last

$py -c "import sys; sys.path.insert(0, 'benchmarks'); from speed_training import write_random_images as w; \
w('$tmp/images32', 16, 32)"
fsdp_all() {  # every latent experiment's tiny version for 4 steps under FSDP2 (DDGAN/SIDDM: finite-difference R1)
    for e in ufogen_sd15 ddgan_sd15 siddm_sd15 lcm_sd15 tscd_sd15; do
        local r1=(); [[ $e == ddgan_sd15 || $e == siddm_sd15 ]] && r1=(method.r1_sigma=0.05)
        $py -m fastgen.fit experiment=$e debug=tiny "data.root=$tmp/images32" trainer.strategy=fsdp trainer.accelerator=$accelerator \
            trainer.max_steps=4 logger=none "paths.runs_dir=$tmp/runs" run_name=fsdp_$e "${r1[@]}" || return 1
        echo "fsdp $e: trained, $(ls $tmp/runs/fsdp_$e/checkpoints)"
    done
}
export -f fsdp_all; export py tmp accelerator
stage fsdp 150 bash -c fsdp_all

stage train_others 130 $py benchmarks/speed_training.py --experiments ddgan_sd15 siddm_sd15 lcm_sd15 lcm_lora_sd15 \
    tscd_sd15 --threads "$threads" --batch-size 8 --steps 4 --warmup 2 --random-images 48 \
    --overrides "${sd15[@]}"

stage sample_compile 400 $py benchmarks/speed_sampling.py --model "$model" --dtype bf16 --methods ufogen \
    --threads "$threads" --batch-sizes 8 --variants compile
rm -rf "$tmp"

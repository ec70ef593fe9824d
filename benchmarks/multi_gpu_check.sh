#!/usr/bin/env bash
# Multi-GPU check of the training loop, for DDP and for FSDP2 (configs/accelerate/):
# 1. the tiny model of tests/tiny_training.py: 6 steps straight, then again killed during step 4 and
#    resumed from the step-2 checkpoint;
# 2. `vpt train-ae` (a tiny VQGAN with its discriminator: two parameter groups): 4 steps straight, then
#    a copy of that run without its step-4 checkpoint resumed from step 2.
# Each requires identical losses at every step and byte-identical final weights (and EMA). The FSDP runs
# must really be sharded: the checkpoint records it and holds the sharded (torch.distributed.checkpoint) state.
#
#   bash benchmarks/multi_gpu_check.sh            # 2 GPUs
#   NUM_GPUS=8 bash benchmarks/multi_gpu_check.sh
#   CONFIGS=ddp_8gpu.yaml bash benchmarks/multi_gpu_check.sh   # one set-up only
#
# Needs NUM_GPUS CUDA devices: on CPUs accelerate turns an FSDP config into plain data parallel, and the
# sharding check fails. Takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1
NUM_GPUS=${NUM_GPUS:-2}
CONFIGS=${CONFIGS:-"ddp_8gpu.yaml fsdp_8gpu.yaml"}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

launch() {  # config run_dir max_steps [--kill-at N]
    local config=$1 run=$2 steps=$3
    shift 3
    python -m accelerate.commands.launch --config_file "configs/accelerate/$config" --num_processes "$NUM_GPUS" \
        tests/tiny_training.py --run "$run" --max-steps "$steps" "$@"
}

train_ae() {  # config run_dir
    python -m accelerate.commands.launch --config_file "configs/accelerate/$1" --num_processes "$NUM_GPUS" \
        -m vpt train-ae --config configs/ae/shapes.yaml --data "$DATA" --run "$2" --max-steps 4 \
        --set autoencoder.arch.ch_mult=[1,2] --set autoencoder.arch.resolution=32 --set autoencoder.arch.n_embed=64 \
        --set train.batch_size=4 --set train.checkpoint_every=2 --set train.keep_last=5 --set train.log_every=1 \
        --set train.ema_decay=0.9 --set loss.disc_start=0 --set train.val_every=2 --set train.sample_every=2
}

DATA=$(python - "$WORK/shapes" <<'PY'
import sys
from pathlib import Path

sys.path.insert(0, "tests")
from data_helpers import shapes_h5

print(shapes_h5(Path(sys.argv[1]), num_videos=8, frames=2))
PY
)

compare() {  # root_dir config: straight/ and split/ must agree
    python - "$1" "$2" "$NUM_GPUS" <<'PY'
import json
import sys
from pathlib import Path

from vpt.runs import Run

root, config, gpus = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
straight, split = Run(root / "straight"), Run(root / "split")
losses = [[(r["step"], r["loss"]) for r in run.read_metrics() if "loss" in r] for run in (straight, split)]
assert [s for s, _ in losses[0]] == list(range(1, len(losses[0]) + 1)) and len(losses[0]) >= 4, losses[0]
assert losses[0] == losses[1], f"resumed losses differ:\n{losses[0]}\n{losses[1]}"
for name in ("model.safetensors", "ema.safetensors"):
    a, b = (run.latest_checkpoint() / name for run in (straight, split))
    assert a.read_bytes() == b.read_bytes(), f"{name} differs after resume"
ckpt = split.latest_checkpoint()
record = json.loads((ckpt / "trainer_state.json").read_text())
assert record["world_size"] == gpus, record
if config.startswith("fsdp"):
    assert record["sharded"], "accelerate did not run FSDP (no CUDA devices?)"
    assert list((ckpt / "training_state").rglob(".metadata")), "no sharded (torch.distributed.checkpoint) state"
print(f"{root.name} under {config}: {gpus} processes, {len(losses[0])} steps straight == resumed, "
      f"final weights byte-identical")
PY
}

for config in $CONFIGS; do
    dir="$WORK/${config%.yaml}"
    launch "$config" "$dir/straight" 6
    if launch "$config" "$dir/split" 6 --kill-at 4; then  # every process dies during step 4
        echo "the run killed during step 4 exited 0"; exit 1
    fi
    [ "$(cat "$dir/split/checkpoints/latest")" = step_000002 ] || { echo "no step-2 checkpoint to resume"; exit 1; }
    launch "$config" "$dir/split" 6
    compare "$dir" "$config"

    dir="$WORK/${config%.yaml}-train-ae"
    train_ae "$config" "$dir/straight"
    cp -r "$dir/straight" "$dir/split"
    rm -rf "$dir/split/checkpoints/step_000004" "$dir/split/checkpoints/latest" "$dir/split/.vpt.lock"
    train_ae "$config" "$dir/split"  # resumes from step 2
    compare "$dir" "$config"
done

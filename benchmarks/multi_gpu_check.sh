#!/usr/bin/env bash
# Multi-GPU check of the training loop: for DDP and for FSDP2 (configs/accelerate/), train the tiny model
# of tests/tiny_training.py for 6 steps straight, then again killed during step 4 and resumed from the
# step-2 checkpoint, and require identical losses at every step and byte-identical final weights. The
# FSDP run must really be sharded: its checkpoint records it and holds the sharded optimizer.
#
#   bash benchmarks/multi_gpu_check.sh            # 2 GPUs
#   NUM_GPUS=8 bash benchmarks/multi_gpu_check.sh
#
# Needs NUM_GPUS CUDA devices (on CPUs accelerate turns an FSDP config into plain data parallel and the
# sharding check fails). Takes about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1
NUM_GPUS=${NUM_GPUS:-2}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

launch() {  # config run_dir max_steps [--kill-at N]
    local config=$1 run=$2 steps=$3
    shift 3
    python -m accelerate.commands.launch --config_file "configs/accelerate/$config" --num_processes "$NUM_GPUS" \
        tests/tiny_training.py --run "$run" --max-steps "$steps" "$@"
}

for config in ddp_8gpu.yaml fsdp_8gpu.yaml; do
    dir="$WORK/${config%.yaml}"
    launch "$config" "$dir/straight" 6
    if launch "$config" "$dir/split" 6 --kill-at 4; then  # every process dies during step 4
        echo "the run killed during step 4 exited 0"; exit 1
    fi
    [ "$(cat "$dir/split/checkpoints/latest")" = step_000002 ] || { echo "no step-2 checkpoint to resume"; exit 1; }
    launch "$config" "$dir/split" 6
    python - "$dir" "$config" "$NUM_GPUS" <<'PY'
import json
import sys
from pathlib import Path

from vpt.runs import Run

root, config, gpus = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
straight, split = Run(root / "straight"), Run(root / "split")
losses = [[(r["step"], r["loss"]) for r in run.read_metrics() if "loss" in r] for run in (straight, split)]
assert [s for s, _ in losses[0]] == list(range(1, 7)), losses[0]
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
print(f"{config}: {gpus} processes, 6 steps straight == 2 + kill + resume, final weights byte-identical")
PY
done

#!/bin/bash
# Multi-node training under SLURM: one torchrun per node, 8 GPUs each, rendezvous on the first node.
#   sbatch --nodes 4 MedVLSAM2Slicer/configs/train/slurm_multinode.sh my_stage2.yaml
# Requeue-safe: when the run's output_dir holds a checkpoint, the job continues from it (--resume).
#SBATCH --job-name=medvlsam2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=64
#SBATCH --requeue
#SBATCH --signal=B:USR1@300
set -euo pipefail
CONFIG=${1:?usage: sbatch --nodes N slurm_multinode.sh CONFIG.yaml}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
OUT=$(python -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['output_dir'])" "$CONFIG")
RESUME=""
if compgen -G "$OUT/checkpoints/step_*/state.json" > /dev/null; then RESUME="--resume"; fi
# Five minutes before the time limit SLURM sends USR1: pass it on (every rank checkpoints after its
# current step and exits), then requeue; the requeued job resumes from that checkpoint.
trap 'kill -USR1 "$PID"; wait "$PID"; scontrol requeue "$SLURM_JOB_ID"' USR1
srun --kill-on-bad-exit=1 torchrun --nnodes "$SLURM_NNODES" --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint "$HEAD:29500" \
    --rdzv_id "$SLURM_JOB_ID" -m medvlsam2 train "$CONFIG" $RESUME &
PID=$!
wait "$PID"

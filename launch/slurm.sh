#!/usr/bin/env bash
# One arjax run over several GPU nodes: sbatch launch/slurm.sh CONFIG[:VARIANT] WORKDIR [overrides...]
# One task per GPU; srun starts them and arjax.distributed reads SLURM_* (the coordinator
# is the first node of the step). WORKDIR must be on a file system every node shares.
#SBATCH --job-name=arjax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=8
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --signal=TERM@120
set -euo pipefail
config=${1:?usage: sbatch launch/slurm.sh CONFIG[:VARIANT] WORKDIR [overrides...]}
workdir=${2:?usage: sbatch launch/slurm.sh CONFIG[:VARIANT] WORKDIR [overrides...]}
shift 2
# --signal=TERM@120 warns every task 2 minutes before the time limit: they agree on a
# step, save one checkpoint and exit; resubmitting the same command resumes.
exec srun --kill-on-bad-exit=1 python -m arjax.launch --config "$config" --workdir "$workdir" \
  --noprogress "$@"

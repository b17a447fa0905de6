#!/usr/bin/env bash
# N processes of one run on this machine (each its share of the devices), e.g. to test
# multi-host code on CPUs: launch/multiprocess.sh N CONFIG[:VARIANT] WORKDIR [overrides...]
# CPU: each process gets ARJAX_CPU_DEVICES (default 4) devices and gloo collectives.
# GPUs: process i sees GPU i only (CUDA_VISIBLE_DEVICES), one process per GPU.
set -euo pipefail
n=${1:?usage: launch/multiprocess.sh N CONFIG[:VARIANT] WORKDIR [overrides...]}
config=${2:?usage: launch/multiprocess.sh N CONFIG[:VARIANT] WORKDIR [overrides...]}
workdir=${3:?usage: launch/multiprocess.sh N CONFIG[:VARIANT] WORKDIR [overrides...]}
shift 3
port=${ARJAX_COORDINATOR_PORT:-$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
pids=()
cleanup() { for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done; }
trap cleanup TERM INT  # a preemption notice goes to every process; each saves and exits
for ((i = 0; i < n; i++)); do
  env_i=(JAX_COORDINATOR_ADDRESS="127.0.0.1:$port" JAX_NUM_PROCESSES="$n" JAX_PROCESS_ID="$i")
  if [[ ${JAX_PLATFORMS:-} == cpu ]]; then
    env_i+=(JAX_NUM_CPU_DEVICES="${ARJAX_CPU_DEVICES:-4}" XLA_FLAGS="")
  elif command -v nvidia-smi >/dev/null; then
    env_i+=(CUDA_VISIBLE_DEVICES="$i")
  fi
  env "${env_i[@]}" python -m arjax.launch --config "$config" --workdir "$workdir" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status

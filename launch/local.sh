#!/usr/bin/env bash
# Run one arjax experiment on this machine: launch/local.sh configs/quickstart.py [workdir] [--config.x=y ...]
set -euo pipefail
config=${1:?usage: launch/local.sh CONFIG[:VARIANT] [WORKDIR] [overrides...]}
shift
workdir=${1:-}
if [[ -n $workdir && $workdir != --* ]]; then shift; else workdir=""; fi
exec python -m arjax.launch --config "$config" ${workdir:+--workdir "$workdir"} "$@"

#!/usr/bin/env bash
# One arjax run on every host of a Cloud TPU VM slice (e.g. v4-32: 4 hosts):
#   launch/tpu_vm.sh TPU_NAME ZONE CONFIG[:VARIANT] WORKDIR [overrides...]
# Runs the same command on all workers (gcloud ... ssh --worker=all); jax's Cloud TPU
# detection (ARJAX_DISTRIBUTED=auto) finds the process count and index. The repository
# must be installed at the same path on every worker (ARJAX_REPO, default ~/arjax), and
# WORKDIR be on a file system all workers share (a Filestore NFS or gcsfuse mount).
set -euo pipefail
tpu=${1:?usage: launch/tpu_vm.sh TPU_NAME ZONE CONFIG[:VARIANT] WORKDIR [overrides...]}
zone=${2:?usage: launch/tpu_vm.sh TPU_NAME ZONE CONFIG[:VARIANT] WORKDIR [overrides...]}
config=${3:?usage: launch/tpu_vm.sh TPU_NAME ZONE CONFIG[:VARIANT] WORKDIR [overrides...]}
workdir=${4:?usage: launch/tpu_vm.sh TPU_NAME ZONE CONFIG[:VARIANT] WORKDIR [overrides...]}
shift 4
repo=${ARJAX_REPO:-\$HOME/arjax}
printf -v extra ' %q' "$@"
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd $repo && ARJAX_DISTRIBUTED=auto python -m arjax.launch --config $(printf %q "$config") --workdir $(printf %q "$workdir") --noprogress$extra"

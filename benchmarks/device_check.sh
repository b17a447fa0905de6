#!/usr/bin/env bash
# The device check in one command (benchmarks/device_check.py; benchmarks/README.md):
#   bash benchmarks/device_check.sh            on the GPU machine; results in $OUT
#   bash benchmarks/device_check.sh --dry-run  tiny sizes on the CPU
# With wheels in .whl/ (benchmarks/device_wheels.py) it installs them first, into
# /tmp/arjax_site, without the network; not in a dry run (this machine has its packages).
set -u
cd "$(dirname "$0")/.." || exit 2
case " $* " in *" --dry-run "*) dry=1 ;; *) dry=0 ;; esac
if [ "$dry" = 0 ] && compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/arjax_site .whl/*.whl || { echo "installing .whl/ failed" >&2; exit 2; }
  export PYTHONPATH="/tmp/arjax_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
exec python3 benchmarks/device_check.py "$@"

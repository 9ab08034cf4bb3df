#!/usr/bin/env bash
# N processes on this machine (e.g. one per GPU, or CPU processes for testing multi-host code paths) through the
# explicit TEAL_* variables read by teal_jax/parallel/distributed.py.
#   launch/local_multiprocess.sh 2 configs/lm/tiny.py:synthetic /tmp/run --config.train.steps=20
set -euo pipefail
n=$1; config=$2; workdir=$3; shift 3
port=${TEAL_PORT:-12355}
pids=()
for ((i = 0; i < n; i++)); do
  TEAL_COORDINATOR=127.0.0.1:$port TEAL_NUM_PROCESSES=$n TEAL_PROCESS_ID=$i \
    ${TEAL_PER_PROCESS_GPU:+CUDA_VISIBLE_DEVICES=$i} \
    python3 -m teal_jax.main --config="$config" --workdir="$workdir" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status

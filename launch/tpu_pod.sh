#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command runs on every worker; JAX detects the pod (jax.distributed
# auto-detection), each host reads its own share of the data, checkpoints go to a shared bucket or filesystem.
#   launch/tpu_pod.sh TPU_NAME ZONE configs/lm/tinyllama_1b.py gs://bucket/runs/lm [--config.train.steps=...]
set -euo pipefail
tpu=$1; zone=$2; config=$3; workdir=$4; shift 4
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  cd ~/teal_jax && python3 -m pip install -q -e . &&
  python3 -m teal_jax.main --config=$config --workdir=$workdir --multihost=force $*"

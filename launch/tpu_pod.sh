#!/usr/bin/env bash
# Cloud TPU pod slice: copy this checkout to every worker, install it with the TPU build of JAX, and run the same
# command on every worker, detached (nohup), one log per worker; JAX detects the pod (jax.distributed auto-detection).
#   launch/tpu_pod.sh start TPU_NAME ZONE CONFIG WORKDIR [--config.overrides ...]   # e.g. WORKDIR=gs://bucket/runs/lm
#   launch/tpu_pod.sh tail  TPU_NAME ZONE            # the last lines of every worker's log
#   launch/tpu_pod.sh stop  TPU_NAME ZONE            # SIGTERM: the workers agree on a step, save it and exit
# DRY_RUN=1 prints every command (gcloud included) instead of running it. Overrides are quoted for the remote shell
# (e.g. --config.mesh.shape='(1,-1,1)' arrives intact).
set -euo pipefail
usage() { echo "usage: $0 start|tail|stop TPU_NAME ZONE [CONFIG WORKDIR [--config.overrides ...]]" >&2; exit 2; }
(($# >= 3)) || usage
action=$1; tpu=$2; zone=$3; shift 3
remote_dir=${TEAL_REMOTE_DIR:-teal_jax}
log=${TEAL_REMOTE_LOG:-teal_jax_logs/train.log}
run() {
  if [[ -n "${DRY_RUN:-}" ]]; then printf '%q ' "$@"; echo; else "$@"; fi
}
ssh_all() {  # one remote shell command on every worker
  run gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$1"
}
case "$action" in
  start)
    (($# >= 2)) || usage
    config=$1; workdir=$2; shift 2
    here=$(cd "$(dirname "$0")/.." && pwd)
    tarball=$(mktemp -u /tmp/teal_jax_XXXXXX).tar.gz
    run git -C "$here" archive --format=tar.gz -o "$tarball" HEAD
    run gcloud compute tpus tpu-vm scp "$tarball" "$tpu:teal_jax.tar.gz" --zone "$zone" --worker=all
    train=$(printf '%q ' python3 -m teal_jax.main "--config=$config" "--workdir=$workdir" --multihost=force "$@")
    setup="set -e; mkdir -p $remote_dir \$(dirname $log) && tar -xzf teal_jax.tar.gz -C $remote_dir"
    setup+=" && cd $remote_dir && python3 -m pip install -q -e '.[tpu]'"
    ssh_all "$setup && nohup $train > \$HOME/$log 2>&1 < /dev/null & echo started on \$(hostname): log \$HOME/$log"
    ;;
  tail) ssh_all "echo == \$(hostname); tail -n ${TEAL_TAIL_LINES:-20} \$HOME/$log" ;;
  stop) ssh_all "pkill -TERM -f 'teal_jax.main' || true" ;;
  *) usage ;;
esac

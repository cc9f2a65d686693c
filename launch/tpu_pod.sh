#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice (e.g. v5litepod-256: 64 hosts x 4 chips): one process per
# host, the same command on every host. jax.distributed.initialize() needs no arguments there:
# JAX reads the worker list and this host's index from the TPU VM metadata server.
#
#   export TPU_NAME=age-pod ZONE=us-west4-a PROJECT=my-project
#   launch/tpu_pod.sh create v5litepod-256              # once (RUNTIME=v2-alpha-tpuv5-lite by default)
#   launch/tpu_pod.sh setup                             # copy this checkout to every host, install
#   launch/tpu_pod.sh data /local/UTKFace               # copy the image folder to every host
#   launch/tpu_pod.sh train --config=configs/x.py --workdir=/mnt/shared/runs/x \
#       --config.data.manual_dir=~/data/UTKFace
#   launch/tpu_pod.sh logs                              # follow process 0's output
#   launch/tpu_pod.sh stop                              # stop the run on every host
#
# --workdir must be the same shared directory on every host (Filestore NFS, or a GCS bucket
# mounted with gcsfuse at the same path): all processes write checkpoint shards there, process 0
# the logs. The dataset is prepared by each host from its own copy of the folder (the build is
# deterministic, so every host gets the same splits) unless --config.data.data_dir is shared.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE, e.g. us-west4-a}"
PROJECT_FLAG=()
if [[ -n "${PROJECT:-}" ]]; then PROJECT_FLAG=(--project="${PROJECT}"); fi
REMOTE_DIR="${REMOTE_DIR:-age_jax}"          # checkout location on each host, relative to ~
RUNTIME="${RUNTIME:-v2-alpha-tpuv5-lite}"
LOG="${LOG:-age_jax_train.log}"

on_all() {  # runs a shell command on every host of the slice, in parallel
  gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" ${PROJECT_FLAG[@]+"${PROJECT_FLAG[@]}"} --worker=all \
    --command="$1"
}

command="${1:-}"
shift || true
case "${command}" in
  create)
    accelerator="${1:?give the accelerator type, e.g. v5litepod-256}"
    gcloud compute tpus tpu-vm create "${TPU_NAME}" --zone="${ZONE}" ${PROJECT_FLAG[@]+"${PROJECT_FLAG[@]}"} \
      --accelerator-type="${accelerator}" --version="${RUNTIME}"
    ;;
  setup)
    archive="$(mktemp -d)/age_jax.tar.gz"
    git archive --format=tar.gz -o "${archive}" HEAD   # committed files only: no data, no caches
    gcloud compute tpus tpu-vm scp "${archive}" "${TPU_NAME}:~/age_jax.tar.gz" --zone="${ZONE}" \
      ${PROJECT_FLAG[@]+"${PROJECT_FLAG[@]}"} --worker=all
    on_all "mkdir -p ~/${REMOTE_DIR} && tar -xzf ~/age_jax.tar.gz -C ~/${REMOTE_DIR} && cd ~/${REMOTE_DIR} \
      && python3 -m venv .venv && .venv/bin/pip install -q -U pip && .venv/bin/pip install -q -e . 'jax[tpu]'"
    ;;
  data)
    folder="${1:?give the local image folder to copy}"
    gcloud compute tpus tpu-vm scp --recurse "${folder}" "${TPU_NAME}:~/data/" --zone="${ZONE}" \
      ${PROJECT_FLAG[@]+"${PROJECT_FLAG[@]}"} --worker=all
    ;;
  train)
    [[ $# -gt 0 ]] || { echo "give launch.train's flags (--config=... --workdir=...)" >&2; exit 2; }
    args="$(printf '%q ' "$@")"
    # nohup: the run survives the ssh session; the pid file lets `stop` end exactly this run.
    # --distributed=on: fail at once if this host does not find its pod.
    run="nohup .venv/bin/python -m launch.train --distributed=on ${args% }"
    # The braces keep `cd` in the ssh shell, so $! is python's pid (nohup execs it), not a subshell's.
    on_all "cd ~/${REMOTE_DIR} && { ${run} > ~/${LOG} 2>&1 < /dev/null & echo \$! > ~/age_jax_train.pid; }"
    echo "started on every host of ${TPU_NAME}; follow with: $0 logs"
    ;;
  logs)
    gcloud compute tpus tpu-vm ssh "${TPU_NAME}" --zone="${ZONE}" ${PROJECT_FLAG[@]+"${PROJECT_FLAG[@]}"} --worker=0 \
      --command="tail -n 100 -f ~/${LOG}"
    ;;
  stop)
    on_all "if [ -f ~/age_jax_train.pid ]; then kill \$(cat ~/age_jax_train.pid) 2>/dev/null || true; \
      rm -f ~/age_jax_train.pid; fi"
    ;;
  *)
    echo "usage: $0 create ACCELERATOR | setup | data FOLDER | train FLAGS... | logs | stop" >&2
    exit 2
    ;;
esac

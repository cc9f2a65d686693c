#!/usr/bin/env bash
# Train, evaluate, predict and export on a Cloud TPU VM pod slice (e.g. v5litepod-16: 4 hosts x 4
# chips): one process per host, the same command on every host. jax.distributed.initialize() needs
# no arguments there: JAX reads the worker list and this host's index from the TPU VM metadata server.
#
#   export TPU_NAME=age-pod ZONE=us-west4-a PROJECT=my-project
#   .venv/bin/python -m launch.preflight --config=configs/x.py --accelerator=v5litepod-16   # here: batch fits?
#   launch/tpu_pod.sh create v5litepod-16               # queued resource; SPOT=1 for Spot capacity
#   launch/tpu_pod.sh status                            # until the request is ACTIVE
#   launch/tpu_pod.sh setup                             # copy this checkout to every host, install
#   launch/tpu_pod.sh data /local/UTKFace               # copy a folder (or a file) to ~/data/ on every host
#   launch/tpu_pod.sh preflight --config=configs/x.py --workdir=gs://bucket/runs/x   # every host: bucket
#                                                       # permissions, coordinator, batch, JAX version
#   launch/tpu_pod.sh train --config=configs/x.py --workdir=gs://bucket/runs/x \
#       --config.data.manual_dir=~/data/UTKFace         # ~/ here is each host's home
#   launch/tpu_pod.sh logs                              # follow process 0's output
#   launch/tpu_pod.sh stop                              # SIGTERM (save, exit), SIGKILL after STOP_TIMEOUT s
#   launch/tpu_pod.sh evaluate --workdir=gs://bucket/runs/x          # every host; report in the workdir
#   launch/tpu_pod.sh predict --workdir=gs://bucket/runs/x --folder=~/data/photos --out=~/predictions.csv
#   launch/tpu_pod.sh export --workdir=gs://bucket/runs/x --out=~/age.jaxexport   # worker 0, on its CPU
#   launch/tpu_pod.sh fetch '~/age.jaxexport' ./age.jaxexport        # copy a file from worker 0
#   launch/tpu_pod.sh delete                            # release the TPU and its queued resource
#
# --workdir must be one directory every host sees: a gs:// bucket path (written directly, see
# age_jax/storage.py), or a Filestore NFS / gcsfuse mount at the same path on every host. The
# dataset is prepared by each host from its own copy of the folder (the build is deterministic,
# so every host gets the same splits) unless --config.data.data_dir is shared. Pretrained weights
# (--config.model.init_from=FILE) are read by every host: ship them with `data FILE`, or use gs://.
#
# evaluate and predict run on every host, as training does: on a pod slice one host alone cannot
# use its TPU chips while the others are idle (the slice's runtime waits for all hosts). export
# needs no accelerator: worker 0 alone with --distributed=off and JAX on its CPU, on purpose.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME to the TPU VM name}"
: "${ZONE:?set ZONE, e.g. us-west4-a}"
PROJECT_FLAG=()
if [[ -n "${PROJECT:-}" ]]; then PROJECT_FLAG=(--project="${PROJECT}"); fi
REMOTE_DIR="${REMOTE_DIR:-age_jax}"          # checkout location on each host, relative to ~
LOG="${LOG:-age_jax_train.log}"
QUEUED_RESOURCE="${QUEUED_RESOURCE:-${TPU_NAME}-qr}"
STOP_TIMEOUT="${STOP_TIMEOUT:-120}"          # seconds `stop` waits for the save before SIGKILL
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"     # the project needs >= 3.11; the images ship 3.10

runtime_for() {  # the documented TPU software version for an accelerator type (RUNTIME overrides)
  case "$1" in
    v6e-*) echo v2-alpha-tpuv6e ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v5litepod-*|v5e-*) echo v2-alpha-tpuv5-lite ;;
    v4-*|v3-*|v2-*) echo tpu-ubuntu2204-base ;;
    *) echo "no default runtime for accelerator '$1': set RUNTIME (see the Cloud TPU 'TPU software versions' page)" >&2
       return 2 ;;
  esac
}

remote_quote() {  # quotes one argument for the remote shell; a leading ~/ (also after the first =) is the host's $HOME
  local arg="$1"
  if [[ "${arg}" == "~/"* ]]; then
    printf '"$HOME"/%q' "${arg#"~/"}"
  elif [[ "${arg}" == *"=~/"* ]]; then
    printf '%q"$HOME"/%q' "${arg%%"=~/"*}=" "${arg#*"=~/"}"
  else
    printf '%q' "${arg}"
  fi
}

gcloud_tpu() {  # gcloud compute tpus SUBCOMMAND ... with the zone and project
  local group="$1"; shift
  gcloud compute tpus "${group}" "$@" --zone="${ZONE}" ${PROJECT_FLAG[@]+"${PROJECT_FLAG[@]}"}
}

on_all() {  # runs a shell command on every host of the slice, in parallel
  gcloud_tpu tpu-vm ssh "${TPU_NAME}" --worker=all --command="$1"
}

command="${1:-}"
shift || true
case "${command}" in
  create)
    accelerator="${1:?give the accelerator type, e.g. v5litepod-256}"
    runtime="${RUNTIME:-$(runtime_for "${accelerator}")}"
    # Queued resources are the documented way to get TPU capacity; --spot: cheaper, preemptible.
    spot=()
    if [[ "${SPOT:-0}" == 1 ]]; then spot=(--spot); fi
    gcloud_tpu queued-resources create "${QUEUED_RESOURCE}" --node-id="${TPU_NAME}" \
      --accelerator-type="${accelerator}" --runtime-version="${runtime}" ${spot[@]+"${spot[@]}"}
    echo "requested ${accelerator} (${runtime}) as ${QUEUED_RESOURCE}; wait for ACTIVE with: $0 status"
    ;;
  status)
    gcloud_tpu queued-resources describe "${QUEUED_RESOURCE}" --format='value(state.state)'
    ;;
  delete)
    gcloud_tpu queued-resources delete "${QUEUED_RESOURCE}" --force --quiet
    ;;
  setup)
    archive="$(mktemp -d)/age_jax.tar.gz"
    git archive --format=tar.gz -o "${archive}" HEAD   # committed files only: no data, no caches
    gcloud_tpu tpu-vm scp "${archive}" "${TPU_NAME}:age_jax.tar.gz" --worker=all
    # uv installs a standalone CPython ${PYTHON_VERSION} per user: no apt (often locked by unattended-upgrades
    # right after boot), no PPA, no python3-venv package. uv itself comes from the registry pip already uses.
    on_all "set -e; mkdir -p ~/${REMOTE_DIR} && tar -xzf ~/age_jax.tar.gz -C ~/${REMOTE_DIR} && cd ~/${REMOTE_DIR}
      python3 -m pip install -q --user -U uv
      ~/.local/bin/uv venv --allow-existing --python ${PYTHON_VERSION} .venv
      ~/.local/bin/uv pip install -q --python .venv/bin/python -e '.[gcs,tpu]'
      .venv/bin/python --version"
    ;;
  data)
    source="${1:?give the local folder (images) or file (e.g. pretrained .safetensors) to copy}"
    source="${source%/}"
    # scp into a missing directory would copy the folder *as* that directory: make it first.
    on_all "mkdir -p ~/data"
    gcloud_tpu tpu-vm scp --recurse "${source}" "${TPU_NAME}:data/" --worker=all
    name="$(basename "${source}")"
    if [[ -d "${source}" ]]; then
      echo "copied to ~/data/${name} on every host: pass --config.data.manual_dir=~/data/${name}"
    else
      echo "copied to ~/data/${name} on every host: pass e.g. --config.model.init_from=~/data/${name}"
    fi
    ;;
  train)
    [[ $# -gt 0 ]] || { echo "give launch.train's flags (--config=... --workdir=...)" >&2; exit 2; }
    args=""
    for a in "$@"; do args+=" $(remote_quote "${a}")"; done
    # nohup: the run survives the ssh session; the pid file lets `stop` end exactly this run.
    # --distributed=on: fail at once if this host does not find its pod.
    run="nohup .venv/bin/python -m launch.train --distributed=on${args}"
    # The braces keep `cd` in the ssh shell, so $! is python's pid (nohup execs it), not a subshell's.
    on_all "cd ~/${REMOTE_DIR} && { ${run} > ~/${LOG} 2>&1 < /dev/null & echo \$! > ~/age_jax_train.pid; }"
    echo "started on every host of ${TPU_NAME}; follow with: $0 logs"
    ;;
  logs)
    gcloud_tpu tpu-vm ssh "${TPU_NAME}" --worker=0 --command="tail -n 100 -f ~/${LOG}"
    ;;
  preflight|evaluate|predict)
    # Every host at once, in the foreground (ssh waits for all); each host's output in
    # ~/age_jax_<command>.log, worker 0's printed after, every host's tail when one failed.
    [[ $# -gt 0 ]] || { echo "give launch.${command}'s flags (--workdir=... ...)" >&2; exit 2; }
    args=""
    for a in "$@"; do args+=" $(remote_quote "${a}")"; done
    log="age_jax_${command}.log"
    status=0
    on_all "cd ~/${REMOTE_DIR} && .venv/bin/python -m launch.${command} --distributed=on${args} > ~/${log} 2>&1" \
      || status=$?
    gcloud_tpu tpu-vm ssh "${TPU_NAME}" --worker=0 --command="cat ~/${log}"
    if [[ ${status} -ne 0 ]]; then
      echo "${command} failed on some host (status ${status}); the end of each host's ~/${log}:" >&2
      on_all "echo \"== \$(hostname)\"; tail -n 5 ~/${log}" >&2 || true
    fi
    exit ${status}
    ;;
  export)
    # Worker 0 alone, on purpose: --distributed=off and JAX on the CPU (the TPU chips of one host
    # of a slice are not usable without the others); the artifact is the same for any backend.
    [[ $# -gt 0 ]] || { echo "give launch.export's flags (--workdir=... --out=...)" >&2; exit 2; }
    args=""
    for a in "$@"; do args+=" $(remote_quote "${a}")"; done
    gcloud_tpu tpu-vm ssh "${TPU_NAME}" --worker=0 \
      --command="cd ~/${REMOTE_DIR} && JAX_PLATFORMS=cpu .venv/bin/python -m launch.export --distributed=off${args}"
    ;;
  fetch)
    remote="${1:?give the file on worker 0 (e.g. '~/age.jaxexport') and optionally where to put it}"
    gcloud_tpu tpu-vm scp "${TPU_NAME}:${remote}" "${2:-.}" --worker=0
    ;;
  stop)
    # SIGTERM first: the trainer saves at JAX's preemption sync point and exits. SIGKILL if it is
    # still there after STOP_TIMEOUT seconds (a hung collective, a host that never got the signal).
    on_all "if [ -f ~/age_jax_train.pid ]; then pid=\$(cat ~/age_jax_train.pid); kill -TERM \$pid 2>/dev/null || true
      for i in \$(seq ${STOP_TIMEOUT}); do kill -0 \$pid 2>/dev/null || break; sleep 1; done
      if kill -0 \$pid 2>/dev/null; then echo \"\$(hostname): still running after ${STOP_TIMEOUT}s, SIGKILL\" >&2; kill -KILL \$pid || true; fi
      rm -f ~/age_jax_train.pid; fi"
    ;;
  *)
    echo "usage: $0 create ACCELERATOR | status | delete | setup | data FOLDER_OR_FILE | preflight FLAGS... |" \
         "train FLAGS... | logs | stop | evaluate FLAGS... | predict FLAGS... | export FLAGS... | fetch FILE [DEST]" >&2
    exit 2
    ;;
esac

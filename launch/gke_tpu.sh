#!/usr/bin/env bash
# Train on a GKE TPU slice as a JobSet: one pod per TPU VM of the slice, each running the same
# `llada-jax train --distributed --resume` (jax.distributed finds its peers from the TPU environment GKE sets).
# Needs the JobSet controller on the cluster, a TPU node pool of the slice's shape, and an image with this
# checkout installed (`pip install -e '.[tpu]'`, plus the data packages if it trains on the built-in corpus).
# The workdir should be a gs:// bucket the pods may write. A failed pod restarts the whole slice up to
# MAX_RESTARTS times (default 3); --resume makes every restart continue from the last good checkpoint, and
# WORKDIR/compilation_cache saves it the compile.
#
#   launch/gke_tpu.sh [--dry-run] NAME IMAGE TOPOLOGY WORKDIR [llada-jax train flags...]
#   launch/gke_tpu.sh llada-8b gcr.io/proj/llada-jax:latest v5e:16x16 gs://bucket/runs/8b \
#       --config configs/llada_8b.py --config.data.source=array_record --config.data.paths=gs://bucket/prepared
#
# TOPOLOGY is what `llada-jax plan --topology` takes: v4:AxBxC, v5p:AxBxC, v5e:AxB or v6e:AxB (multi-host slices,
# 4 chips per VM). --dry-run prints the manifest and the kubectl command instead of applying it.
set -euo pipefail
dry_run=0
if [ "${1:-}" = "--dry-run" ]; then
  dry_run=1
  shift
fi
if [ $# -lt 4 ]; then
  echo "usage: $0 [--dry-run] NAME IMAGE TOPOLOGY WORKDIR [llada-jax train flags...]" >&2
  exit 2
fi
name=$1 image=$2 topology=$3 workdir=$4
shift 4
chip=${topology%%:*}
shape=${topology#*:}
case $chip in
  v4) accelerator=tpu-v4-podslice ;;
  v5p) accelerator=tpu-v5p-slice ;;
  v5e) accelerator=tpu-v5-lite-podslice ;;
  v6e) accelerator=tpu-v6e-slice ;;
  *) echo "unknown TPU $chip in $topology: use v4, v5p, v5e or v6e, e.g. v5e:16x16" >&2; exit 2 ;;
esac
if ! [[ $shape =~ ^[0-9]+(x[0-9]+)+$ ]]; then
  echo "topology $topology must look like $chip:16x16 or $chip:4x4x4" >&2
  exit 2
fi
chips=$((${shape//x/*}))
chips_per_vm=4
if [ $((chips % chips_per_vm)) -ne 0 ] || [ "$chips" -lt 8 ]; then
  echo "$topology has $chips chips: not a multi-host slice of $chips_per_vm-chip VMs" >&2
  exit 2
fi
vms=$((chips / chips_per_vm))

yaml_quote() { local s=${1//\'/\'\'}; printf "'%s'" "$s"; }
command="'llada-jax', 'train', '--distributed', '--resume', '--no-progress', '--workdir', $(yaml_quote "$workdir")"
for arg in "$@"; do
  command+=", $(yaml_quote "$arg")"
done

manifest="apiVersion: jobset.x-k8s.io/v1alpha2
kind: JobSet
metadata:
  name: $name
  annotations:
    alpha.jobset.sigs.k8s.io/exclusive-topology: cloud.google.com/gke-nodepool
spec:
  failurePolicy:
    maxRestarts: ${MAX_RESTARTS:-3}
  replicatedJobs:
  - name: slice
    replicas: 1
    template:
      spec:
        parallelism: $vms
        completions: $vms
        backoffLimit: 0
        template:
          spec:
            restartPolicy: Never
            hostNetwork: true
            dnsPolicy: ClusterFirstWithHostNet
            nodeSelector:
              cloud.google.com/gke-tpu-accelerator: $accelerator
              cloud.google.com/gke-tpu-topology: $shape
            containers:
            - name: llada-jax
              image: $(yaml_quote "$image")
              command: [$command]
              resources:
                limits:
                  google.com/tpu: $chips_per_vm"

if [ "$dry_run" = 1 ]; then
  echo "$manifest"
  echo "---"
  echo "# kubectl apply -f -"
else
  echo "$manifest" | kubectl apply -f -
fi

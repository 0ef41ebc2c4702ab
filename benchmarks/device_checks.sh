#!/usr/bin/env bash
# The concept stage's measurements that need a GPU (issue 11), as one prepared run:
#   bash benchmarks/device_checks.sh   (needs a CUDA build of torch; not yet run on a GPU:
#   bench_device.py alone takes 9 min on 2 CPU threads with --device cpu)
# 1. Lasso time against rows and bisecting k-means at the papers' size on the device;
# 2. atlas build samples/s and peak memory, one shared forward vs one per layer.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
$PY bench_device.py --device cuda
$PY bench_atlas_build.py --device cuda --memory --models toy-resnet efficientnet_lite0 resnet50

#!/usr/bin/env bash
# A trained chair model on the six REAL chairs of tests/data, none of which it was trained on:
# two ShapeNet v2 chairs (our voxeliser and renders), the 3D-R2N2 chair (its ShapeNetVox32 voxels
# and R2N2's own renderings) and IM-NET's three 256^3 sample chairs (binvox, facing +z; views
# rendered from the voxels). Scored like any test file, beside the retrieval baseline over the
# model's own training chairs. Results: bench/results/real_chairs/summary.{md,json}.
#
#   bash bench/real_chairs.sh                                  # the demo's model (make demo first)
#   bash bench/real_chairs.sh runs/svr/best.pt data/03001627_train.hdf5
set -euo pipefail
cd "$(dirname "$0")/.."
CHECKPOINT=${1:-demo_out/svr/best.pt}
TRAIN=${2:-demo_out/data/03001627_train.hdf5}
WORK=${WORK:-/tmp/imnet_real_chairs}
RESULTS=bench/results/real_chairs
PY=${PYTHON:-python}
for f in "$CHECKPOINT" "$TRAIN"; do
    [ -f "$f" ] || { echo "real_chairs.sh: $f not found (run make demo, or give a checkpoint and its training file)" >&2; exit 2; }
done
# Only this script's own folders are cleared: WORK may be a folder that holds other things.
(cd "${WORK:?}" 2>/dev/null && rm -rf imnet shapenet r2n2 imnet_prepared data eval) || true
mkdir -p "$WORK/imnet/03001627" "$RESULTS"

for i in 1 2 3; do cp "tests/data/imnet_original_sample/$i.binvox" "$WORK/imnet/03001627/imnet_sample_$i.binvox"; done
$PY -m data_prep shapenet tests/data/shapenet_v2_sample --synsets chair --out "$WORK/shapenet"
$PY -m data_prep binvox tests/data/r2n2_sample/ShapeNetVox32 --r2n2 tests/data/r2n2_sample/ShapeNetRendering --out "$WORK/r2n2"
$PY -m data_prep binvox "$WORK/imnet" --front +z --out "$WORK/imnet_prepared"
# All six in one test file (none of them for training).
$PY -m data_prep merge "$WORK/shapenet" "$WORK/r2n2" "$WORK/imnet_prepared" --out "$WORK/data" --train-fraction 0
$PY -m eval run --checkpoint "$CHECKPOINT" --data "$WORK/data/03001627_test.hdf5" --train-data "$TRAIN" \
    --out "$WORK/eval" --resolution 128
cp "$WORK/eval/summary.md" "$WORK/eval/summary.json" "$WORK/eval/per_shape.csv" "$RESULTS/"
echo "real chairs: results in $RESULTS (renders: $WORK/eval/report.html)"

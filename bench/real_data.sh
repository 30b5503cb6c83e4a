#!/usr/bin/env bash
# Train and evaluate on REAL data: the ShapeNet v2 fixture chairs (our voxeliser, our renders) and
# the 3D-R2N2 chair (ShapeNetVox32 voxels, R2N2's own renderings), together with generated chairs.
# SVR trains on views 0-19 only, so views 20-23 of every training shape (the real ones included)
# are held out. Results: bench/results/real_data/{ae_train,svr_heldout_views,svr_test}/summary.json.
#
#   bash bench/real_data.sh            # about 12 minutes on 2 CPU cores
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${WORK:-/tmp/imnet_real_data}
RESULTS=bench/results/real_data
PY=${PYTHON:-python}
mkdir -p "$WORK" "$RESULTS"

$PY -m data_prep shapenet tests/data/shapenet_v2_sample --synsets chair --out "$WORK/shapenet"
$PY -m data_prep binvox tests/data/r2n2_sample/ShapeNetVox32 --r2n2 tests/data/r2n2_sample/ShapeNetRendering --out "$WORK/r2n2"
$PY -m data_prep synthetic --categories chair --count 64 --out "$WORK/synthetic" --workers 2
$PY -m data_prep merge "$WORK/shapenet" "$WORK/r2n2" "$WORK/synthetic" --out "$WORK/data"  # real ids sort first: all in train
TRAIN="$WORK/data/03001627_train.hdf5"
TEST="$WORK/data/03001627_test.hdf5"

MODEL=(--code-dim 64 --decoder-widths 256,256,128,64,32 --voxel-channels 8,16,32,64)
FAST=(--lr 1e-3 --beta1 0.9 --batch-shapes 8)
resume() { [ -f "$1/last.pt" ] && echo --resume || true; }
$PY train.py ae --data "$TRAIN" --val-data "$TEST" --out-dir "$WORK/ae" $(resume "$WORK/ae") \
    --epochs 16:20,32:60,64:320 --points-per-shape 1024 --val-every 20 --checkpoint-every 20 "${MODEL[@]}" "${FAST[@]}"
$PY train.py codes --checkpoint "$WORK/ae/best.pt" --data "$TRAIN" --val-data "$TEST" --out "$WORK/codes.npz"
$PY train.py svr --data "$TRAIN" --val-data "$TEST" --ae-checkpoint "$WORK/ae/best.pt" --codes "$WORK/codes.npz" \
    --out-dir "$WORK/svr" $(resume "$WORK/svr") --epochs 60 --train-views 20 --val-every 10 --checkpoint-every 10 "${FAST[@]}"

# AE on its training shapes: the decoder fed the voxel encoder's codes (python, not a CLI: the eval
# CLI scores image -> mesh; this scores voxels -> mesh with the same metric functions).
$PY - "$WORK/ae/best.pt" "$TRAIN" "$RESULTS/ae_train.json" <<'EOF'
import json, sys
import numpy as np, torch
from imnet.checkpoint import load_model
from imnet.datafile import open_datafile
from imnet.inference import decoder_field
from imnet.extract import dense_grid
from imnet.metrics import iou_occupancy
model, _ = load_model(sys.argv[1]); model.eval()
data = open_datafile(sys.argv[2])
rows = []
for i, name in enumerate(data.names):
    voxels = np.asarray(data.voxels[i], bool)
    with torch.no_grad():
        code = model.voxel_encoder(torch.from_numpy(voxels).float()[None, None])[0]
    occupancy = dense_grid(decoder_field(model.decoder, code), 64) > 0.5  # the stored voxels' grid
    rows.append({"name": name, "iou64": iou_occupancy(occupancy, voxels)})
real = [r["iou64"] for r in rows if "synthetic" not in r["name"]]
synthetic = [r["iou64"] for r in rows if "synthetic" in r["name"]]
summary = {"real_mean_iou64": float(np.mean(real)), "synthetic_mean_iou64": float(np.mean(synthetic)), "shapes": rows}
open(sys.argv[3], "w").write(json.dumps(summary, indent=2))
print(f"AE IoU (64^3, training shapes): real {summary['real_mean_iou64']:.3f}, generated {summary['synthetic_mean_iou64']:.3f}")
EOF

# SVR on held-out views (22) of the training shapes -- the real ones are the first three rows --
# and on the held-out generated test shapes (view 0), each beside the retrieval baseline.
$PY -m eval run --checkpoint "$WORK/svr/best.pt" --data "$TRAIN" --view 22 --limit 3 --out "$WORK/eval_heldout_views" \
    --resolution 128 --retrieval none
$PY -m eval run --checkpoint "$WORK/svr/best.pt" --data "$TEST" --train-data "$TRAIN" --out "$WORK/eval_test" --resolution 128
cp "$WORK/eval_heldout_views/summary.json" "$RESULTS/svr_heldout_views_real.json"
cp "$WORK/eval_heldout_views/per_shape.csv" "$RESULTS/svr_heldout_views_real.csv"
cp "$WORK/eval_test/summary.json" "$RESULTS/svr_test_generated.json"
cp "$WORK/eval_test/summary.md" "$RESULTS/svr_test_generated.md"
echo "real-data run: results in $RESULTS"

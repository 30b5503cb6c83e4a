#!/usr/bin/env bash
# The whole pipeline on generated chairs, written out as the commands a user would type.
# `make demo` runs it; about 10-15 minutes on 2 CPU cores. Outputs go to $OUT (default demo_out/).
#
# The demo trains a small decoder (256-256-128-64-32, code 64) with a larger learning rate than
# the paper's (1e-3 and beta1 0.9 instead of 5e-5 and 0.5) so that it learns in minutes on a CPU.
# (Higher rates make the encoder's sigmoid codes saturate and collapse to one code for all shapes.)
# The paper's settings are the defaults of train.py.
set -euo pipefail
cd "$(dirname "$0")"

OUT=${OUT:-demo_out}
SYNSET=03001627  # chair
PY=${PYTHON:-python}
start=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }
resume() { [ -f "$1/last.pt" ] && echo --resume || true; }  # rerunning the demo continues, not restarts

step "1/6 data: generate 64 chairs, voxelise at 256^3, sample points, render 24 views each"
$PY -m data_prep synthetic --categories chair --count 64 --out "$OUT/data" --workers 2
TRAIN="$OUT/data/${SYNSET}_train.hdf5"
TEST="$OUT/data/${SYNSET}_test.hdf5"

MODEL=(--code-dim 64 --decoder-widths 256,256,128,64,32 --voxel-channels 8,16,32,64)
FAST=(--lr 1e-3 --beta1 0.9 --batch-shapes 8)

step "2/6 IM-AE: voxel encoder + decoder, progressive 16 -> 32 -> 64"
$PY train.py ae --data "$TRAIN" --val-data "$TEST" --out-dir "$OUT/ae" $(resume "$OUT/ae") \
    --epochs 16:20,32:60,64:320 --points-per-shape 1024 --val-every 20 --checkpoint-every 20 "${MODEL[@]}" "${FAST[@]}"

step "3/6 the AE code of every shape"
$PY train.py codes --checkpoint "$OUT/ae/best.pt" --data "$TRAIN" --val-data "$TEST" --out "$OUT/codes.npz"

step "4/6 IM-SVR: ResNet-18 regresses the codes from single views (decoder frozen)"
$PY train.py svr --data "$TRAIN" --val-data "$TEST" --ae-checkpoint "$OUT/ae/best.pt" --codes "$OUT/codes.npz" \
    --out-dir "$OUT/svr" $(resume "$OUT/svr") --epochs 60 --val-every 10 --checkpoint-every 10 "${FAST[@]}"

step "5/6 reconstruct held-out views at 128^3 (trained on 64^3 samples) and two real photos"
$PY reconstruct.py --checkpoint "$OUT/svr/best.pt" "$TEST" --view 0 --resolution 128 -o "$OUT/meshes" --preview
$PY reconstruct.py --checkpoint "$OUT/svr/best.pt" tests/data/real_photos --resolution 128 -o "$OUT/photos" \
    --save-input --preview

step "6/6 evaluate against the ground truth, beside the retrieval baseline"
$PY -m eval run --checkpoint "$OUT/svr/best.pt" --data "$TEST" --train-data "$TRAIN" --out "$OUT/eval" \
    --resolution 128 --points 50000 --surface-points 50000

step "done"
cat <<EOF
Demo finished in $(( $(date +%s) - start )) s.
  data         $OUT/data/            (HDF5 in IM-NET's layout, generated meshes in meshes/)
  checkpoints  $OUT/ae/best.pt, $OUT/svr/best.pt   (metrics.csv, tensorboard/ beside them)
  meshes       $OUT/meshes/ (held-out views), $OUT/photos/ (real photos)   *_preview.png: input | mesh
  report       $OUT/eval/summary.md, $OUT/eval/report.html
  web app      python app.py   (uses $OUT/svr/best.pt)
EOF
grep -A4 "^| category" "$OUT/eval/summary.md" | head -6 || true

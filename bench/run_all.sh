#!/usr/bin/env bash
# Every benchmark; each writes bench/results/<name>.json. Pass DEVICE=cuda to run the GPU ones on a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cpu}
python bench/bench_voxelize.py
python bench/bench_data_prep.py
python bench/bench_train.py --device "$DEVICE"
python bench/bench_extract.py --tiny-decoder --decoder-resolutions 64 100 128 256 --max-dense-decoder-points 16777216
python bench/bench_extract.py --decoder bench_out/paper_decoder.pt --skip-shapenet --out bench/results/extract_paper_decoder.json
ls -l bench/results/

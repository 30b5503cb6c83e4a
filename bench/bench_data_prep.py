"""Data-prep throughput per stage (load+normalise, voxelise 256^3, sample, render 24 views, write),
single process, on the real ShapeNet fixtures and on generated shapes.

Writes bench/results/data_prep.json with seconds per shape per stage, shapes per minute per core,
and an estimate of the wall time for ShapeNet's 6,778 chairs on a 16-core machine.

    python bench/bench_data_prep.py [--synthetic 6]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per worker, as in `data_prep --workers N`

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # data_prep is a program folder at the top of the checkout, not installed
from data_prep import pipeline, sources  # noqa: E402
from data_prep.synthetic import generate_shape  # noqa: E402
from imnet import datafile  # noqa: E402
from imnet.mesh import load_mesh, normalisation, normalise  # noqa: E402
from imnet.render import sample_r2n2_cameras  # noqa: E402
from imnet.sampling import downsample_voxels, sample_points  # noqa: E402
from imnet.voxelize import voxelize_solid  # noqa: E402

STAGES = ("load", "voxelise", "sample", "render", "write")


def time_shape(mesh_or_path, name: str, out_dir: Path) -> dict[str, float]:
    t = {}
    start = time.perf_counter()
    if isinstance(mesh_or_path, (str, Path)):
        mesh = load_mesh(mesh_or_path)
    else:
        mesh = mesh_or_path
    centre, scale = normalisation(mesh.bounds)
    normalise(mesh, centre, scale)
    t["load"] = time.perf_counter() - start

    start = time.perf_counter()
    solid = voxelize_solid(mesh, 256)
    t["voxelise"] = time.perf_counter() - start

    start = time.perf_counter()
    rng = pipeline.shape_seed(name, 0)
    record = {"name": np.array(name), "source": np.array(name), "centre": centre, "scale": np.float32(scale),
              "voxels": downsample_voxels(solid, 64)[..., None].astype(np.uint8), **sample_points(solid, rng)}
    t["sample"] = time.perf_counter() - start

    start = time.perf_counter()
    cameras = sample_r2n2_cameras(24, rng)
    # The pipeline's own per-process renderer, as a worker uses it (created once, before timing).
    record["pixels"], record["cameras"] = pipeline.renderer(137).views(mesh, cameras), cameras
    t["render"] = time.perf_counter() - start

    start = time.perf_counter()
    datafile.write_shape_record(out_dir / f"{name.replace('/', '_')}.npz", record)
    t["write"] = time.perf_counter() - start
    return t


def summarise(rows: list[dict[str, float]]) -> dict:
    per_stage = {s: float(np.mean([r[s] for r in rows])) for s in STAGES}
    total = sum(per_stage.values())
    return {
        "shapes": len(rows),
        "seconds_per_shape": {**per_stage, "total": total},
        "shapes_per_minute_per_core": {**{s: 60.0 / v for s, v in per_stage.items()}, "total": 60.0 / total},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--synthetic", type=int, default=6, help="generated shapes per category (chair, table, airplane)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "data_prep.json"))
    args = parser.parse_args()

    pipeline.renderer(137)  # its one-off start-up (~0.2 s) is not a per-shape cost
    with tempfile.TemporaryDirectory() as tmp:
        fixtures = sources.shapenet_sources(ROOT / "tests" / "data" / "shapenet_v2_sample")
        real = [time_shape(s.path, s.name, Path(tmp)) | {"name": s.name} for s in fixtures]
        generated = [
            time_shape(generate_shape(category, (0, i)), f"{category}/{i}", Path(tmp))
            for category in ("chair", "table", "airplane")
            for i in range(args.synthetic)
        ]
    real_summary = summarise(real)
    chairs_seconds = 6778 * real_summary["seconds_per_shape"]["total"] / 16
    results = {
        "machine": f"{os.cpu_count()} cores, one process per core (OMP_NUM_THREADS=1)",
        "shapenet_v2_fixtures": {**real_summary, "per_shape": real},
        "generated": summarise(generated),
        "estimate_6778_chairs_16_cores_minutes": chairs_seconds / 60,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    r = real_summary["seconds_per_shape"]
    print(" ".join(f"{s} {r[s]:.2f}s" for s in (*STAGES, "total")) + f" per ShapeNet fixture shape; "
          f"6,778 chairs on 16 cores ~ {chairs_seconds / 60:.0f} min; wrote {out}")


if __name__ == "__main__":
    main()

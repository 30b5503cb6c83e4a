"""Speed of `imnet.voxelize.voxelize_solid` at 256^3 on one core, and its agreement with ShapeNet's binvox.

    python bench/bench_voxelize.py [--repeats 3]

Writes bench/results/voxelize.json: per shape the faces, the median wall-clock and CPU seconds of a
256^3 voxelisation, shapes per minute per core; and, for the ShapeNet v2 fixtures, IoU and
one-voxel-tolerance precision/recall against the official 128^3 `model_normalized.solid.binvox`.
CPU time is reported next to wall time because the machine may be shared; it is the number to
quote when the wall time is inflated by other load.
"""

import os

# One core: pin every thread pool before numpy / scipy load their BLAS.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = "1"

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import trimesh
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from imnet.binvox import binvox_bounds, read_binvox  # noqa: E402
from imnet.voxelize import voxelize_solid  # noqa: E402

SHAPENET = sorted((ROOT / "tests/data/shapenet_v2_sample").glob("*/*/models"))


def _box(lo, hi):
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return trimesh.creation.box(extents=hi - lo, transform=trimesh.transformations.translation_matrix((lo + hi) / 2))


def synthetic_shapes() -> dict[str, trimesh.Trimesh]:
    legs = [_box([x - 0.03, -0.42, z - 0.03], [x + 0.03, -0.05, z + 0.03]) for x in (-0.2, 0.2) for z in (-0.2, 0.2)]
    chair = trimesh.util.concatenate(
        [_box([-0.25, -0.08, -0.25], [0.25, -0.01, 0.25]), _box([-0.25, -0.04, -0.25], [0.25, 0.43, -0.19]), *legs]
    )
    cup_bottom = trimesh.creation.cylinder(radius=0.25, height=0.08)
    cup_bottom.apply_translation([0, 0, -0.27])
    return {
        "sphere (20k faces)": trimesh.creation.icosphere(subdivisions=5, radius=0.45),
        "sphere (328k faces)": trimesh.creation.icosphere(subdivisions=7, radius=0.45),
        "torus": trimesh.creation.torus(major_radius=0.3, minor_radius=0.1),
        "box chair": chair,
        "cup": trimesh.util.concatenate([trimesh.creation.annulus(r_min=0.2, r_max=0.25, height=0.6), cup_bottom]),
    }


def time_shape(mesh: trimesh.Trimesh, repeats: int) -> dict:
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        voxels = voxelize_solid(mesh, resolution=256)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {
        "faces": len(mesh.faces),
        "seconds_wall": round(statistics.median(walls), 3),
        "seconds_cpu": round(statistics.median(cpus), 3),
        "occupied_fraction": round(float(voxels.mean()), 5),
    }


def agreement_with_binvox(model_dir: Path) -> dict:
    official, translate, scale = read_binvox(model_dir / "model_normalized.solid.binvox")
    mesh = trimesh.load(model_dir / "model_normalized.obj", force="mesh")
    ours = voxelize_solid(mesh, resolution=official.shape[0], bounds=binvox_bounds(translate, scale))
    cube = np.ones((3, 3, 3), bool)
    return {
        "iou": round(float((ours & official).sum() / (ours | official).sum()), 4),
        "precision_1voxel": round(float((ours & ndimage.binary_dilation(official, cube)).sum() / ours.sum()), 4),
        "recall_1voxel": round(float((official & ndimage.binary_dilation(ours, cube)).sum() / official.sum()), 4),
        "voxels_ours": int(ours.sum()),
        "voxels_official": int(official.sum()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per shape (median reported)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/voxelize.json")
    args = parser.parse_args()

    shapes = {
        f"shapenet {d.parts[-3]}/{d.parts[-2][:8]}": trimesh.load(d / "model_normalized.obj", force="mesh")
        for d in SHAPENET
    }
    shapes.update(synthetic_shapes())
    voxelize_solid(shapes[next(iter(shapes))], resolution=64)  # warm-up: imports, allocator

    timings = {}
    for name, mesh in shapes.items():
        timings[name] = time_shape(mesh, args.repeats)
        print(f"{name:28s} {timings[name]['faces']:7d} faces  {timings[name]['seconds_wall']:6.2f} s wall"
              f"  {timings[name]['seconds_cpu']:6.2f} s cpu")
    shapenet_cpu = [t["seconds_cpu"] for name, t in timings.items() if name.startswith("shapenet")]
    all_cpu = [t["seconds_cpu"] for t in timings.values()]

    agreement = {f"{d.parts[-3]}/{d.parts[-2]}": agreement_with_binvox(d) for d in SHAPENET}
    for name, a in agreement.items():
        print(f"vs binvox 128^3 {name}: IoU {a['iou']:.3f}  "
              f"precision@1 {a['precision_1voxel']:.3f}  recall@1 {a['recall_1voxel']:.3f}")

    result = {
        "benchmark": "voxelize_solid, resolution 256, close_gaps 2, one thread",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "logical_cores": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
        },
        "repeats": args.repeats,
        "shapes": timings,
        "shapenet_mean_seconds_cpu": round(statistics.mean(shapenet_cpu), 3),
        "shapenet_shapes_per_minute_per_core": round(60 / statistics.mean(shapenet_cpu), 1),
        "all_mean_seconds_cpu": round(statistics.mean(all_cpu), 3),
        "agreement_with_official_solid_binvox_128": agreement,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"shapes/minute/core (ShapeNet fixtures): {result['shapenet_shapes_per_minute_per_core']}  -> {args.out}")


if __name__ == "__main__":
    main()

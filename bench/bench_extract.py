"""Field evaluations and time of coarse-to-fine vs dense grid sampling (`imnet.extract`).

    python bench/bench_extract.py [--resolutions 64 128 256] [--checkpoint PATH]

Fields measured:
- "analytic chair": a union of boxes (seat, 2-voxel-thick slats, thin legs and stretchers at 256^3)
  through a sigmoid of the signed distance, so it resembles a decoder's output;
- "shapenet <synset>/<id>": the real ShapeNet v2 fixtures' solid 128^3 voxels, trilinearly
  interpolated -- realistic shapes, cheap to evaluate;
- with --checkpoint, "decoder": a trained IM-NET decoder (via `imnet.inference.decoder_field`) on
  the code its voxel encoder gives the first shape of the 2018-layout fixture
  `samplechair_vox.hdf5`.

For each field and resolution: evaluations and seconds of both samplers, the reduction (R^3 /
coarse-to-fine evaluations), the "floor" (grid points of the cells the surface crosses, which any
exact sampler must evaluate), the IoU of the two occupancies and whether they are equal. Dense
sampling larger than --max-dense-points is not run; its time is extrapolated from the field's
measured throughput, and the entry says so ("dense_seconds_extrapolated": true, IoU null).
"decoder_cpu_seconds_at_17k_points_per_s" converts evaluations to the time they would take with an
IM-NET decoder on a CPU. Writes bench/results/extract.json.
"""

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import map_coordinates
from scipy.special import expit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from imnet.binvox import read_binvox  # noqa: E402
from imnet.extract import coarse_to_fine_grid, dense_grid, grid_to_mesh  # noqa: E402

DATA = ROOT / "tests/data"
DECODER_CPU_POINTS_PER_SECOND = 17_000  # IM-NET's 2048-wide decoder, code terms precomputed

# Chair boxes (min corner, max corner) in object space, y up; at 256^3 a voxel is 1/256 = 0.0039.
_LEGS = [[[x - 0.008, -0.45, z - 0.008], [x + 0.008, -0.05, z + 0.008]] for x in (-0.18, 0.18) for z in (-0.18, 0.18)]
_STRETCHERS = [  # 2x2-voxel rods between the legs
    [[-0.18, -0.304, -0.184], [0.18, -0.296, -0.176]],
    [[-0.18, -0.304, 0.176], [0.18, -0.296, 0.184]],
    [[-0.184, -0.254, -0.18], [-0.176, -0.246, 0.18]],
    [[0.176, -0.254, -0.18], [0.184, -0.246, 0.18]],
]
_BACK = [[[x - 0.012, 0.0, 0.166], [x + 0.012, 0.45, 0.19]] for x in (-0.18, 0.18)]
_SLATS = [[[-0.17, y - 0.02, 0.174], [0.17, y + 0.02, 0.182]] for y in (0.1, 0.2, 0.3, 0.4)]  # 2 voxels thick
CHAIR_BOXES = np.array([[[-0.2, -0.05, -0.2], [0.2, 0.0, 0.2]], *_LEGS, *_STRETCHERS, *_BACK, *_SLATS], np.float32)


def analytic_chair(points: np.ndarray, sharpness: float = 400.0) -> np.ndarray:
    """Occupancy of the box chair: sigmoid of -sharpness * signed distance, [N, 3] -> [N]."""
    centre, half = CHAIR_BOXES.mean(axis=1), (CHAIR_BOXES[:, 1] - CHAIR_BOXES[:, 0]) / 2
    q = np.abs(points[:, None, :] - centre) - half
    distance = np.linalg.norm(np.maximum(q, 0), axis=2) + np.minimum(q.max(axis=2), 0)
    return expit(-sharpness * distance.min(axis=1)).astype(np.float32)


def voxel_field(path: Path):
    """Trilinear interpolation of a solid binvox grid: a realistic, cheap occupancy field."""
    voxels, translate, scale = read_binvox(path)
    voxels = voxels.astype(np.float32)

    def field(points: np.ndarray) -> np.ndarray:
        index = (points - translate) / scale * len(voxels) - 0.5
        return map_coordinates(voxels, index.T, order=1).astype(np.float32)

    return field


def decoder_field_from_checkpoint(path: Path):
    import h5py
    import torch

    from imnet.checkpoint import load_model
    from imnet.inference import decoder_field

    model, _ = load_model(path)
    model.eval()
    with h5py.File(DATA / "imnet_original_sample/samplechair_vox.hdf5", "r") as f:
        voxels = torch.from_numpy(f["voxels"][:1, ..., 0].astype(np.float32))[:, None]
    with torch.inference_mode():
        code = model.voxel_encoder(voxels)[0]
    return decoder_field(model.decoder, code)


def surface_floor(occupied: np.ndarray) -> int:
    """Grid points that are a corner of a cell the surface crosses (padding counted as outside)."""
    cells = sliding_window_view(np.pad(occupied, 1), (2, 2, 2))
    crossed = cells.any(axis=(-3, -2, -1)) & ~cells.all(axis=(-3, -2, -1))
    corner = np.zeros(np.array(occupied.shape) + 2, dtype=bool)
    for dx, dy, dz in np.ndindex(2, 2, 2):
        corner[dx : dx + crossed.shape[0], dy : dy + crossed.shape[1], dz : dz + crossed.shape[2]] |= crossed
    return int(corner[1:-1, 1:-1, 1:-1].sum())


def bench_field(field, resolutions, max_dense_points, coarse_resolution, gap_level) -> dict:
    results, points_per_second = {}, None
    for resolution in resolutions:
        n = resolution**3
        entry = {}
        start = time.perf_counter()
        values, stats = coarse_to_fine_grid(field, resolution, coarse_resolution=coarse_resolution, gap_level=gap_level)
        c2f_seconds = time.perf_counter() - start
        start = time.perf_counter()
        mesh = grid_to_mesh(values)
        mesh_seconds = time.perf_counter() - start

        if n <= max_dense_points:
            start = time.perf_counter()
            dense = dense_grid(field, resolution)
            dense_seconds = time.perf_counter() - start
            points_per_second = n / dense_seconds
            a, b = dense > 0.5, values > 0.5
            floor = surface_floor(a)
            entry.update(
                dense_seconds=round(dense_seconds, 3),
                dense_seconds_extrapolated=False,
                iou=round(float((a & b).sum() / max((a | b).sum(), 1)), 6),
                occupancy_equal=bool(np.array_equal(a, b)),
                floor_evaluations=floor,
                floor_reduction=round(n / floor, 1),
            )
        else:
            entry.update(
                dense_seconds=round(n / points_per_second, 1) if points_per_second else None,
                dense_seconds_extrapolated=True,
                iou=None,
                occupancy_equal=None,
            )
        entry.update(
            dense_evaluations=n,
            coarse_to_fine_evaluations=stats.evaluations,
            reduction=round(stats.reduction, 1),
            coarse_to_fine_seconds=round(c2f_seconds, 3),
            coarse_to_fine_field_calls=stats.field_calls,
            evaluations_per_level={str(k): v for k, v in stats.evaluations_per_level.items()},
            neighbour_rounds_per_level={str(k): v for k, v in stats.neighbour_rounds_per_level.items()},
            speedup_wall=round(entry["dense_seconds"] / c2f_seconds, 1) if entry["dense_seconds"] else None,
            decoder_cpu_seconds_at_17k_points_per_s={
                "dense": round(n / DECODER_CPU_POINTS_PER_SECOND, 1),
                "coarse_to_fine": round(stats.evaluations / DECODER_CPU_POINTS_PER_SECOND, 1),
            },
            marching_cubes_seconds=round(mesh_seconds, 3),
            mesh_faces=len(mesh.faces),
            mesh_watertight=bool(mesh.is_watertight),
        )
        results[str(resolution)] = entry
        print(
            f"  {resolution:4d}^3: {stats.evaluations:9d} evaluations ({entry['reduction']:6.1f}x fewer"
            + (f", floor {entry['floor_reduction']:6.1f}x" if "floor_reduction" in entry else "")
            + f"), IoU vs dense {entry['iou']}, c2f {c2f_seconds:6.2f} s, dense {entry['dense_seconds']} s"
            + (" (extrapolated)" if entry["dense_seconds_extrapolated"] else ""),
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--checkpoint", type=Path, help="also benchmark this trained model's decoder")
    parser.add_argument("--coarse-resolution", type=int, default=None, help="default: imnet.extract's (32)")
    parser.add_argument("--gap-level", type=float, default=None)
    parser.add_argument(
        "--max-dense-points", type=int, default=None,
        help="run dense sampling only up to this many points, extrapolate beyond "
        "(default 256^3 for the cheap fields, 128^3 for a decoder)",
    )
    parser.add_argument("--skip-shapenet", action="store_true", help="only the analytic chair (and decoder)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/extract.json")
    args = parser.parse_args()

    fields = {"analytic chair": (analytic_chair, 256**3)}
    if not args.skip_shapenet:
        for path in sorted(DATA.glob("shapenet_v2_sample/*/*/models/model_normalized.solid.binvox")):
            fields[f"shapenet {path.parts[-4]}/{path.parts[-3][:8]}"] = (voxel_field(path), 256**3)
    if args.checkpoint:
        fields["decoder"] = (decoder_field_from_checkpoint(args.checkpoint), 128**3)

    results = {}
    for name, (field, max_dense) in fields.items():
        print(name, flush=True)
        max_dense = args.max_dense_points if args.max_dense_points is not None else max_dense
        results[name] = bench_field(field, args.resolutions, max_dense, args.coarse_resolution, args.gap_level)

    result = {
        "benchmark": "imnet.extract: coarse_to_fine_grid vs dense_grid, level 0.5",
        "settings": {
            "coarse_resolution": args.coarse_resolution or 32,
            "gap_level": args.gap_level,
            "checkpoint": str(args.checkpoint) if args.checkpoint else None,
        },
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "logical_cores": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        },
        "fields": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()

"""Evaluations and time of certified and coarse-to-fine sampling vs dense and the floor (`imnet.extract`).

    python bench/bench_extract.py [--resolutions 64 128 256] [--tiny-decoder] [--decoder PATH] [--skip-shapenet]

Fields measured:
- "analytic chair": a union of boxes (seat, 2-voxel-thick slats, thin legs and stretchers at 256^3)
  through a sigmoid of the signed distance, with Lipschitz bounds;
- "shapenet <synset>/<id>": the ShapeNet v2 fixtures' official solid 128^3 voxels, nearest voxel
  (a 0/1 field), with exact bounds from a summed-volume table;
- with --decoder, a decoder of the paper's widths fitted to a generated chair
  (`bench/fit_paper_decoder.py`, run if the file is missing), with its affine bounds; plus its
  throughput (points/s, boxes/s: the measured cost of a bound in point evaluations), the bf16
  flip measurement (bf16 vs fp32 sides at grid points next to its surface) and coarse-to-fine
  extraction at the largest --decoder-resolutions in fp32 and in bf16 (wall time, points recomputed
  in fp32, grid points on the other side); with --tiny-decoder the same for the tests' tiny decoder.

For each field and resolution: the floor (grid points of cells the surface crosses, which any exact
sampler must evaluate), coarse-to-fine's and certified's evaluations (certified: + bound
evaluations x their cost = evaluation units), their reductions vs R^3 and as a fraction of the
floor's reduction, seconds, and whether certified equals dense (where dense runs; beyond
--max-dense-points its time is extrapolated). Writes bench/results/extract.json.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy.special import expit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from imnet.binvox import read_binvox  # noqa: E402
from imnet.extract import certified_grid, coarse_to_fine_grid, dense_grid, floor_points, grid_to_mesh  # noqa: E402

DATA = ROOT / "tests/data"

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


class AnalyticChair:
    """Occupancy of the box chair: sigmoid of -sharpness * signed distance, [N, 3] -> [N], with
    sound bounds over boxes (the distance is 1-Lipschitz: within half the box diagonal of its value
    at the box centre)."""

    bound_cost = 1.0  # one distance evaluation per box, as per point

    def __init__(self, sharpness: float = 400.0):
        self.sharpness = sharpness
        boxes = CHAIR_BOXES.astype(np.float64)
        self.centre, self.half = boxes.mean(axis=1), (boxes[:, 1] - boxes[:, 0]) / 2

    def distance(self, points: np.ndarray) -> np.ndarray:
        q = np.abs(np.asarray(points, dtype=np.float64)[:, None, :] - self.centre) - self.half
        return (np.linalg.norm(np.maximum(q, 0), axis=2) + np.minimum(q.max(axis=2), 0)).min(axis=1)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        return expit(-self.sharpness * self.distance(points)).astype(np.float32)

    def bounds(self, low: np.ndarray, high: np.ndarray):
        d = self.distance((low + high) / 2)
        reach = np.linalg.norm(high - low, axis=1) / 2 + 1e-9
        return expit(-self.sharpness * (d + reach)).astype(np.float32), expit(-self.sharpness * (d - reach)).astype(np.float32)


class VoxelField:
    """Nearest voxel of a solid binvox grid (a 0/1 field, as the issue's measurements), with exact
    bounds over boxes from a summed-volume table of the voxels."""

    bound_cost = 1.0

    def __init__(self, path: Path):
        voxels, self.translate, self.scale = read_binvox(path)
        self.voxels = voxels.astype(np.float32)
        self.n = len(voxels)
        self.table = np.pad(voxels.astype(np.int64), ((1, 0),) * 3).cumsum(0).cumsum(1).cumsum(2)

    def index(self, points: np.ndarray) -> np.ndarray:
        return np.clip(np.floor((np.asarray(points, np.float64) - self.translate) / self.scale * self.n), 0, self.n - 1).astype(int)

    def __call__(self, points: np.ndarray) -> np.ndarray:
        i = self.index(points)
        return self.voxels[i[:, 0], i[:, 1], i[:, 2]]

    def bounds(self, low: np.ndarray, high: np.ndarray):
        a, b = self.index(low), self.index(high) + 1  # voxel ranges [a, b): floor is monotone
        t = self.table
        count = (t[b[:, 0], b[:, 1], b[:, 2]] - t[a[:, 0], b[:, 1], b[:, 2]] - t[b[:, 0], a[:, 1], b[:, 2]]
                 - t[b[:, 0], b[:, 1], a[:, 2]] + t[a[:, 0], a[:, 1], b[:, 2]] + t[a[:, 0], b[:, 1], a[:, 2]]
                 + t[b[:, 0], a[:, 1], a[:, 2]] - t[a[:, 0], a[:, 1], a[:, 2]])
        return (count == np.prod(b - a, axis=1)).astype(np.float32), (count > 0).astype(np.float32)


def fitted_decoder_field(path: Path, precision: str = "fp32"):
    """The paper-width decoder of bench/fit_paper_decoder.py as a bounded field."""
    from fit_paper_decoder import load_fitted

    from imnet.inference import decoder_field

    decoder, code = load_fitted(path)
    return decoder_field(decoder, code, precision=precision)


def surface_floor(occupied: np.ndarray) -> int:
    """Grid points that are a corner of a cell the surface crosses (padding counted as outside)."""
    return int(floor_points(occupied).sum())


def bench_field(field, resolutions, max_dense_points) -> dict:
    results, points_per_second = {}, None
    for resolution in resolutions:
        n = resolution**3
        entry = {}
        start = time.perf_counter()
        c2f, c2f_stats = coarse_to_fine_grid(field, resolution)
        c2f_seconds = time.perf_counter() - start
        start = time.perf_counter()
        certified, stats = certified_grid(field, resolution)
        certified_seconds = time.perf_counter() - start
        mesh = grid_to_mesh(certified)
        reference = certified > 0.5  # equal to dense by construction; checked below where dense runs
        floor = surface_floor(reference)
        if floor == 0:
            raise SystemExit(f"bench_extract: the field has no surface at level 0.5 at {resolution}^3 (nothing inside, or "
                             "nothing outside); for the fitted decoder, fit it longer (bench/fit_paper_decoder.py --steps)")
        if n <= max_dense_points:
            start = time.perf_counter()
            dense = dense_grid(field, resolution)
            dense_seconds = time.perf_counter() - start
            points_per_second = n / dense_seconds
            a = dense > 0.5
            entry.update(dense_seconds=round(dense_seconds, 2), dense_seconds_extrapolated=False,
                         certified_equal_dense=bool(np.array_equal(a, reference)),
                         coarse_to_fine_iou=round(float((a & (c2f > 0.5)).sum() / max((a | (c2f > 0.5)).sum(), 1)), 6))
        else:
            entry.update(dense_seconds=round(n / points_per_second, 1) if points_per_second else None,
                         dense_seconds_extrapolated=True, certified_equal_dense=None,
                         coarse_to_fine_iou=round(float((reference & (c2f > 0.5)).sum() / max((reference | (c2f > 0.5)).sum(), 1)), 6))
        entry.update(
            floor_evaluations=floor,
            floor_reduction=round(n / floor, 1),
            coarse_to_fine={"evaluations": c2f_stats.evaluations, "reduction": round(c2f_stats.reduction, 1),
                            "fraction_of_floor_reduction": round(floor / c2f_stats.evaluations, 3),
                            "seconds": round(c2f_seconds, 2),
                            "evaluations_per_stage": c2f_stats.evaluations_per_stage},
            certified={"evaluations": stats.evaluations, "bound_evaluations": stats.bound_evaluations,
                       "bound_cost": stats.bound_cost, "evaluation_units": stats.evaluation_units,
                       "reduction": round(stats.reduction, 1),
                       "fraction_of_floor_reduction": round(floor / stats.evaluation_units, 3),
                       "evaluations_per_stage": stats.evaluations_per_stage,
                       "bound_evaluations_per_size": {str(k): v for k, v in stats.bound_evaluations_per_size.items()},
                       "boxes_certified_free": stats.boxes_certified_free,
                       "seconds": round(certified_seconds, 2)},
            mesh_faces=len(mesh.faces),
            mesh_watertight=bool(mesh.is_watertight),
        )
        results[str(resolution)] = entry
        print(f"  {resolution:4d}^3: floor {floor_reduction(entry)}; c2f {c2f_stats.evaluations} evals "
              f"({entry['coarse_to_fine']['reduction']}x, IoU {entry['coarse_to_fine_iou']}, {c2f_seconds:.1f} s); "
              f"certified {stats.evaluations} evals + {stats.bound_evaluations} bounds x {stats.bound_cost:g} = "
              f"{stats.evaluation_units:.0f} units ({entry['certified']['reduction']}x, "
              f"{entry['certified']['fraction_of_floor_reduction']} of the floor's, equal to dense: "
              f"{entry['certified_equal_dense']}, {certified_seconds:.1f} s)", flush=True)
    return results


def floor_reduction(entry: dict) -> str:
    return f"{entry['floor_evaluations']} points ({entry['floor_reduction']}x)"


def bf16_flips(make_field, points_count: int) -> dict:
    """bf16 vs fp32 on grid points next to the surface of a decoder at 128^3 (make_field(precision))."""
    import torch

    fp32 = make_field("fp32")
    values, _ = certified_grid(fp32, 128)
    near = np.argwhere(floor_points(values > 0.5))
    if not len(near):
        return {"points": 0, "where": "no surface at level 0.5: nothing to measure"}
    rng = np.random.default_rng(0)
    pick = near[rng.choice(len(near), size=min(points_count, len(near)), replace=False)]
    points = ((pick + 0.5) / 128 - 0.5).astype(np.float32)
    a = fp32(points)
    raw = make_field("bf16")
    start = time.perf_counter()
    b = raw._evaluate(points, "bf16")  # without the fp32 refinement
    seconds = time.perf_counter() - start
    refined = make_field("bf16")(points)
    from imnet.inference import BF16_REFINE_MARGIN

    return {
        "points": len(points), "where": "grid points of cells the surface crosses, 128^3",
        "flips_raw_bf16": int(((a > 0.5) != (b > 0.5)).sum()),
        "flip_rate_raw_bf16": round(float(((a > 0.5) != (b > 0.5)).mean()), 5),
        "max_abs_difference": round(float(np.abs(a - b).max()), 5),
        "refine_margin": BF16_REFINE_MARGIN,
        "refined_fraction": round(float((np.abs(b - 0.5) < BF16_REFINE_MARGIN).mean()), 4),
        "flips_after_fp32_refinement": int(((a > 0.5) != (refined > 0.5)).sum()),
        "bf16_points_per_second": round(len(points) / seconds, 1),
        "bf16_is_fast_here": bool(__import__("imnet.precision", fromlist=["bf16_is_fast"]).bf16_is_fast("cpu")),
        "torch_threads": torch.get_num_threads(),
    }




def precision_extraction(make_field, resolution: int) -> dict:
    """Coarse-to-fine extraction of a decoder field in fp32 and in bf16 (make_field(precision)):
    wall time, evaluations, points recomputed in fp32, grid points whose side differs."""
    result, occupied = {"resolution": resolution}, {}
    for precision in ("fp32", "bf16"):
        field = make_field(precision)
        start = time.perf_counter()
        values, stats = coarse_to_fine_grid(field, resolution)
        result[precision] = {"seconds": round(time.perf_counter() - start, 2), "evaluations": stats.evaluations,
                             "recomputed_in_fp32": field.refined}
        occupied[precision] = values > 0.5
    result["bf16_points_on_the_other_side"] = int((occupied["fp32"] != occupied["bf16"]).sum())
    return result


def decoder_throughput(field, n: int = 20000) -> float:
    points = np.random.default_rng(0).uniform(-0.5, 0.5, (n, 3)).astype(np.float32)
    field(points[:1000])
    start = time.perf_counter()
    field(points)
    return n / (time.perf_counter() - start)


def bound_throughput(field, n: int = 2000) -> float:
    low = np.random.default_rng(0).uniform(-0.5, 0.45, (n, 3))
    field.affine_bounds(low[:100], low[:100] + 0.03, 0.5)
    start = time.perf_counter()
    field.affine_bounds(low, low + 0.03, 0.5)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolutions", type=int, nargs="+", default=[64, 128, 256])
    parser.add_argument("--decoder", type=Path, help="a decoder from bench/fit_paper_decoder.py (fitted if missing)")
    parser.add_argument("--tiny-decoder", action="store_true",
                        help="also the tiny decoder that tests/conftest.py fits to a box chair (cheap, trained)")
    parser.add_argument("--decoder-resolutions", type=int, nargs="+", default=[64, 100, 256])
    parser.add_argument("--max-dense-points", type=int, default=256**3,
                        help="run dense sampling only up to this many points (cheap fields), extrapolate beyond")
    parser.add_argument("--max-dense-decoder-points", type=int, default=100**3)
    parser.add_argument("--bf16-points", type=int, default=2000, help="surface points of the bf16 flip measurement")
    parser.add_argument("--skip-shapenet", action="store_true", help="only the analytic chair (and decoder)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/extract.json")
    args = parser.parse_args()

    fields = {"analytic chair (Lipschitz bounds)": (AnalyticChair(), args.resolutions, args.max_dense_points)}
    if not args.skip_shapenet:
        for path in sorted(DATA.glob("shapenet_v2_sample/*/*/models/model_normalized.solid.binvox")):
            fields[f"shapenet {path.parts[-4]}/{path.parts[-3][:8]} (0/1 voxels)"] = (
                VoxelField(path), args.resolutions, args.max_dense_points)
    extra = {}
    if args.decoder:
        if not args.decoder.exists():
            subprocess.run([sys.executable, str(ROOT / "bench/fit_paper_decoder.py"), "--out", str(args.decoder)], check=True)
        field = fitted_decoder_field(args.decoder)
        fields["paper-width decoder (fitted, affine bounds)"] = (field, args.decoder_resolutions, args.max_dense_decoder_points)
        points_per_second, boxes_per_second = decoder_throughput(field), bound_throughput(field)
        extra["decoder"] = {
            "fp32_points_per_second": round(points_per_second), "affine_boxes_per_second": round(boxes_per_second, 1),
            "affine_bound_cost_measured": round(points_per_second / boxes_per_second, 2),
            "affine_bound_cost_by_multiply_adds": field.bound_cost,
        }
        print(extra["decoder"], flush=True)
        make = lambda precision: fitted_decoder_field(args.decoder, precision)
        extra["bf16"] = bf16_flips(make, args.bf16_points)
        print(extra["bf16"], flush=True)
        extra["extraction_fp32_vs_bf16"] = precision_extraction(make, max(args.decoder_resolutions))
        print(extra["extraction_fp32_vs_bf16"], flush=True)

    if args.tiny_decoder:
        sys.path.insert(0, str(ROOT / "tests"))
        import torch
        from conftest import fit_tiny_chair_model

        from imnet.inference import decoder_field

        tiny = fit_tiny_chair_model()
        make = lambda precision: decoder_field(tiny.decoder, torch.zeros(tiny.config.code_dim), precision=precision)
        fields["tiny trained decoder (tests/conftest.py, 64-64-32, affine bounds)"] = (
            make("fp32"), args.decoder_resolutions, args.max_dense_decoder_points)
        extra["tiny_decoder_bf16"] = bf16_flips(make, args.bf16_points)
        print(extra["tiny_decoder_bf16"], flush=True)
        extra["tiny_decoder_extraction_fp32_vs_bf16"] = precision_extraction(make, max(args.decoder_resolutions))
        print(extra["tiny_decoder_extraction_fp32_vs_bf16"], flush=True)

    results = {}
    for name, (field, resolutions, max_dense) in fields.items():
        print(name, flush=True)
        results[name] = bench_field(field, resolutions, max_dense)

    result = {
        "benchmark": "imnet.extract: certified_grid and coarse_to_fine_grid vs dense_grid and the floor, level 0.5",
        "note": "evaluation counts are deterministic; wall times depend on the machine and its load (load_average_1min)",
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "logical_cores": os.cpu_count(),
            "load_average_1min": round(os.getloadavg()[0], 2),
            "python": platform.python_version(),
            "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        },
        **extra,
        "fields": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()

"""python -m eval {run,metrics} ...: see --help of each.

A program of this project, run from the top of the checkout (it is not installed with the library).
"""

from __future__ import annotations

import argparse
import json
import sys

from eval.run import GT_MODES, EvalConfig
from imnet.config import format_config
from imnet.mesh import AXES, SHAPENET_FRONT, SHAPENET_UP, axis_argv

RUN_EPILOG = """Output (in --out): per_shape.csv and per_shape.json (one row per shape, raw metrics), summary.md
and summary.json (means per category and overall, with the conventions), report.html with images/
(input, ground truth, prediction and retrieved shape per shape; open it in a browser, no server needed).
Tables print CD-L1 x10, CD-L2 x1000 and IM-NET's Chamfer x1000, as the papers do."""


def build_parser() -> argparse.ArgumentParser:
    d = EvalConfig(data="", out_dir="")
    parser = argparse.ArgumentParser(
        prog="python -m eval",
        description="Evaluate single-view reconstruction: IoU, Chamfer-L1/L2, normal consistency and F-score "
        "(Occupancy Networks' protocol) and IM-NET's Chamfer distance, next to a retrieval baseline.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="evaluate a checkpoint (or reconstructed meshes) on a test data file",
                       description="Reconstruct every test shape from one stored view and score it against its "
                       "ground truth; with --train-data, score the retrieval baseline the same way.", epilog=RUN_EPILOG)
    p.add_argument("--data", required=True, help="test HDF5 file (data_prep output, or IM-NET's published files)")
    p.add_argument("--out", required=True, help="output folder (created; files in it are replaced)")
    p.add_argument("--checkpoint", default="", help="SVR checkpoint (train.py svr) to reconstruct with")
    p.add_argument("--meshes", default="", help="instead of reconstructing: folder of meshes made earlier by "
                   "reconstruct.py from the same file, named <name with / as _>_viewVV.obj (object space)")
    p.add_argument("--train-data", default="", help="training HDF5 file: score the retrieval baseline (nearest "
                   "training shape by its views) beside the network")
    p.add_argument("--retrieval", choices=["pixels", "encoder", "none"], default=d.retrieval,
                   help="retrieval features: 32x32 pixels (default), the SVR encoder's 512-d pooled features, "
                   "or none to skip the baseline")
    p.add_argument("--view", type=int, default=d.view, help="stored view used as input (default %(default)s)")
    p.add_argument("--resolution", type=int, default=d.resolution, help="marching-cubes grid of the "
                   "reconstructions (default %(default)s)")
    p.add_argument("--limit", type=int, default=d.limit, help="evaluate only the first N shapes (default: all)")
    p.add_argument("--points", type=int, default=d.iou_points, help="IoU points in [-0.55, 0.55]^3; fewer is "
                   "faster and noisier (default %(default)s, as Occupancy Networks)")
    p.add_argument("--surface-points", type=int, default=d.surface_points, help="points per surface for "
                   "Chamfer-L1/L2, NC and F-score (default %(default)s, as Occupancy Networks)")
    p.add_argument("--gt", choices=GT_MODES, default=d.gt, help="ground truth: the source mesh when its file is "
                   "found, else the stored 64^3 voxels (auto, default); require the mesh; or always the voxels")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--no-html", action="store_true", help="skip report.html and its renders (faster)")
    p.add_argument("--published", action="store_true", help="add the published numbers of IM-NET and "
                   "Occupancy Networks (their data and protocol, docs/published.md) to summary.md")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the IoU points and surface samples")

    p = sub.add_parser("metrics", help="compare two mesh files", description="Print every metric of a predicted "
                       "mesh against a ground-truth mesh, both in object space [-0.5, 0.5]^3 with ShapeNet v2's axes "
                       "(y up, front -z); a ground truth in other axes is turned with --up/--front, one in other "
                       "units mapped with --normalize.")
    p.add_argument("prediction", help="predicted mesh file (closed, e.g. from reconstruct.py)")
    p.add_argument("ground_truth", help="ground-truth mesh file (need not be watertight)")
    p.add_argument("--up", choices=AXES, default=SHAPENET_UP, help="the ground truth's axis that points up "
                   "(default %(default)s; as for `data_prep meshes`)")
    p.add_argument("--front", choices=AXES, default=SHAPENET_FRONT, help="the ground truth's axis its front faces "
                   "(default %(default)s)")
    p.add_argument("--normalize", action="store_true", help="both meshes are in the ground truth's source frame "
                   "(e.g. reconstruct.py --original-frame): turn both by --up/--front and map both with the ground "
                   "truth's normalisation (bounding-box centre to the origin, diagonal to 1) first")
    p.add_argument("--points", type=int, default=d.iou_points, help="IoU points (default %(default)s)")
    p.add_argument("--surface-points", type=int, default=d.surface_points, help="points per surface (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="sampling seed")
    p.add_argument("--json", action="store_true", help="print the raw metrics as JSON")
    return parser


def run(args: argparse.Namespace) -> str:
    from eval import report
    from eval.run import compare_mesh_files, evaluate

    if args.command == "metrics":
        scores = compare_mesh_files(args.prediction, args.ground_truth, normalize=args.normalize, up=args.up,
                                    front=args.front, iou_points=args.points, surface_points=args.surface_points,
                                    seed=args.seed)
        if args.json:
            return json.dumps(scores, indent=1)
        lines = []
        for key, value in scores.items():
            lines.append(f"{key:<20} {value:.6g}")
            scaled = next((c for c in report.TABLE_COLUMNS if c[0] == key and c[2] != 1), None)
            if scaled:  # also in the units the tables (and the papers) print
                lines[-1] += f"   ({scaled[1]}: {value * scaled[2]:.4g})"
        return "\n".join(lines)

    config = EvalConfig(
        data=args.data, out_dir=args.out, checkpoint=args.checkpoint, meshes=args.meshes,
        train_data=args.train_data, retrieval=args.retrieval, view=args.view, resolution=args.resolution,
        limit=args.limit, iou_points=args.points, surface_points=args.surface_points, gt=args.gt,
        device=args.device, html=not args.no_html, published=args.published, seed=args.seed,
    )
    print(format_config(config))
    return evaluate(config).line()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(axis_argv(sys.argv[1:] if argv is None else argv))
    try:
        print(run(args))
    except (FileNotFoundError, ValueError) as e:  # user mistakes: one line, no traceback
        print(f"eval: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("eval: interrupted; the tables and report of this run were not written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

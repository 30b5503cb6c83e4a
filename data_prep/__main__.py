"""python -m data_prep {shapenet,meshes,binvox,synthetic,merge} ...: see --help of each.

A program of this project, run from the top of the checkout (it is not installed with the library).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from imnet.config import DataPrepConfig, format_config
from imnet.mesh import AXES, SHAPENET_FRONT, SHAPENET_UP, axis_argv

EPILOG = """Output (in --out): <category>_train.hdf5 and <category>_test.hdf5 in IM-NET's layout, each with
a names file (<same stem>.txt, one 'category/model_id' per row), failures.csv for shapes that could
not be prepared, and shapes/ with one record per shape (what makes a rerun resume)."""


def add_common(p: argparse.ArgumentParser) -> None:
    d = DataPrepConfig()
    p.add_argument("--out", required=True, help="output folder (created if missing; a rerun resumes there)")
    p.add_argument("--workers", type=int, default=d.workers, help="worker processes (default %(default)s)")
    p.add_argument("--shard", default=d.shard, help="k/n: prepare only every n-th shape starting at k, to split "
                   "a category across machines; assemble with `merge` afterwards (default %(default)s)")
    p.add_argument("--close-gaps", type=int, default=d.close_gaps, help="voxeliser: close holes in the surface up "
                   "to about twice this many voxels wide (default %(default)s)")
    p.add_argument("--no-render", action="store_true", help="skip the 24 views (AE-only data, much faster)")
    p.add_argument("--views", type=int, default=d.views, help="views per shape, any number >= 1 (default %(default)s, "
                   "as 3D-R2N2; at most 24 with --r2n2); the data file records the count")
    p.add_argument("--train-fraction", type=float, default=d.train_fraction, help="fraction of sorted model ids "
                   "per category that go to train (default %(default)s; 0: all test, 1: all train)")
    p.add_argument("--split-file", default="", help='JSON {"train": [...], "test": [...]} of model ids, '
                   "instead of --train-fraction")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of point sampling and camera placement")


def config_from(args: argparse.Namespace) -> DataPrepConfig:
    """The run's config, every option checked (`pipeline.check_config`) before anything is written."""
    from data_prep.pipeline import check_config

    if not 0.0 <= args.train_fraction <= 1.0:
        raise ValueError("--train-fraction must be between 0 and 1")
    config = DataPrepConfig(
        out_dir=args.out, close_gaps=args.close_gaps, views=args.views,
        render=not args.no_render, voxels_from=getattr(args, "voxels_from", "mesh"),
        train_fraction=args.train_fraction, split_file=args.split_file, seed=args.seed,
        workers=args.workers, shard=args.shard,
    )
    check_config(config)
    return config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m data_prep",
        description="Prepare shapes into HDF5 files in IM-NET's layout: 64^3 solid voxels, point/occupancy "
        "samples at 16^3, 32^3 and 64^3 (from 256^3 solid voxels) and 24 grayscale 137x137 views.",
        epilog=EPILOG,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("shapenet", help="a ShapeNetCore v1 or v2 tree", epilog=EPILOG,
                       description="Prepare shapes of a ShapeNetCore v1 (<synset>/<id>/model.obj) or v2 "
                       "(<synset>/<id>/models/model_normalized.obj) tree.")
    p.add_argument("root", help="ShapeNetCore root folder (holding the 8-digit synset folders)")
    p.add_argument("--synsets", nargs="+", help="synset ids or names (chair, table, airplane, ...); default: all")
    p.add_argument("--ids", help="text file of model ids ('<id>' or '<synset>/<id>'), one per line")
    p.add_argument("--r2n2", help="3D-R2N2 ShapeNetRendering folder: take the views from there when a shape has them")
    p.add_argument("--voxels-from", choices=["mesh", "binvox"], default="mesh",
                   help="'mesh': our voxeliser on the mesh (default); 'binvox': ShapeNet v2's official "
                   "model_normalized.solid.binvox (128^3, upsampled), the mesh is still used for views")
    add_common(p)

    p = sub.add_parser("meshes", help="plain mesh folders, category = folder", epilog=EPILOG,
                       description="Prepare <root>/<category>/<name>.{obj,off,ply,stl,glb} meshes. Meshes are "
                       "turned into ShapeNet v2's axes (y up, front -z) from the axes given with --up and "
                       "--front, which every shape's metadata records.")
    p.add_argument("root", help="folder of category folders")
    p.add_argument("--up", choices=AXES, default=SHAPENET_UP, help="the meshes' axis that points up "
                   "(default %(default)s; most CAD and scanning software: +z)")
    p.add_argument("--front", choices=AXES, default=SHAPENET_FRONT, help="the meshes' axis the objects' front faces "
                   "(a chair's seat opening, a car's bonnet; default %(default)s)")
    add_common(p)

    p = sub.add_parser("binvox", help="binvox voxel files (ShapeNetVox32, v2 *.solid.binvox, any binvox)",
                       epilog=EPILOG, description="Prepare solid binvox files. Views come from --r2n2 when "
                       "given, else are rendered from the voxels' marching-cubes surface. ShapeNetVox32's "
                       "model.binvox (up +y, front +x) and ShapeNet v2's model_normalized.solid.binvox (up +y, "
                       "front -z) are recognised by name; --up and --front give the axes of any other file.")
    p.add_argument("root", help="folder searched recursively for *.binvox")
    p.add_argument("--r2n2", help="3D-R2N2 ShapeNetRendering folder for the views")
    p.add_argument("--up", choices=AXES, default=SHAPENET_UP, help="the axis that points up in binvox files "
                   "not recognised by name (default %(default)s)")
    p.add_argument("--front", choices=AXES, default=SHAPENET_FRONT, help="the axis the objects' front faces in "
                   "binvox files not recognised by name (default %(default)s; IM-NET's 256^3 voxels: +z)")
    add_common(p)

    p = sub.add_parser("synthetic", help="generated chairs, tables, airplanes (no download needed)", epilog=EPILOG,
                       description="Generate shapes procedurally (deterministic from --seed), write them as meshes "
                       "to <out>/meshes/<category>/, and prepare them exactly like a plain mesh folder.")
    p.add_argument("--categories", nargs="+", default=["chair"], help="categories to generate: chair, table, "
                   "airplane, sofa, lamp (default: chair)")
    p.add_argument("--count", type=int, default=32, help="shapes per category (default %(default)s)")
    add_common(p)

    p = sub.add_parser("merge", help="assemble the HDF5 files from shard output folders",
                       description="Assemble <category>_<split>.hdf5 from the per-shape records of one or more "
                       "output folders (e.g. shards prepared on different machines with --shard k/n).")
    p.add_argument("shard_dirs", nargs="+", help="output folders of the shards")
    p.add_argument("--out", required=True, help="where to write the HDF5 files")
    p.add_argument("--train-fraction", type=float, default=DataPrepConfig().train_fraction, help="as for the other commands")
    p.add_argument("--split-file", default="", help="as for the other commands")
    return parser


def export_synthetic(categories: list[str], count: int, seed: int, root: Path) -> Path:
    """Write generated meshes as <root>/<synset>/synthetic_<category>_NNNN.obj (existing files are kept,
    so a rerun resumes); from there they take the plain mesh-folder path like any user's meshes."""
    from data_prep.synthetic import CATEGORIES, generate_shape
    from imnet.mesh import save_mesh

    unknown = [c for c in categories if c not in CATEGORIES]
    if unknown:
        raise ValueError(f"unknown synthetic categories {unknown}; choose from {sorted(CATEGORIES)}")
    if count < 1:
        raise ValueError("--count must be at least 1")
    for category in categories:
        folder = root / CATEGORIES[category]
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            path = folder / f"synthetic_{category}_{i:04d}.obj"
            if not path.is_file():
                save_mesh(generate_shape(category, (seed, i)), path)
    return root


def run(args: argparse.Namespace) -> tuple[str, int]:
    """Run one command: (its one-line summary, the exit status: 1 when nothing was written)."""
    from data_prep import pipeline, sources

    if args.command == "merge":
        config = DataPrepConfig(out_dir=args.out, train_fraction=args.train_fraction, split_file=args.split_file)
        outputs = pipeline.merge([Path(d) for d in args.shard_dirs], config)
        return f"merged {len(args.shard_dirs)} folders into {pipeline.format_outputs(outputs)}", 0

    config = config_from(args)
    if args.command == "shapenet":
        ids = Path(args.ids).read_text().split() if args.ids else None
        found = sources.shapenet_sources(args.root, args.synsets, ids)
    elif args.command == "meshes":
        found = sources.mesh_folder_sources(args.root, up=args.up, front=args.front)
    elif args.command == "binvox":
        found = sources.binvox_sources(args.root, up=args.up, front=args.front)
    else:
        found = sources.mesh_folder_sources(export_synthetic(args.categories, args.count, args.seed, Path(args.out) / "meshes"))
    if getattr(args, "r2n2", None):
        found = sources.attach_r2n2_views(found, args.r2n2)
    print(format_config(config), file=sys.stderr)
    axes = sorted({(s.up, s.front) for s in found})
    print(f"{len(found)} shapes found; source axes (up, front): {', '.join(' '.join(a) for a in axes)}", file=sys.stderr)
    summary = pipeline.prepare(found, config)
    if summary.failed:
        print(f"{len(summary.failed)} shapes failed; reasons in {Path(args.out) / pipeline.FAILURES_FILE}", file=sys.stderr)
    return summary.line(), 1 if summary.wrote_nothing else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(axis_argv(sys.argv[1:] if argv is None else argv))
    try:
        line, status = run(args)
    except (OSError, ValueError) as e:  # user mistakes and unwritable outputs: one line, no traceback
        print(f"data_prep: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("data_prep: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    print(line)
    return status


if __name__ == "__main__":
    sys.exit(main())

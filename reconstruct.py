"""Single-view reconstruction: images in, meshes out, at any resolution.

    image -> 128x128 grayscale input -> image encoder -> code z -> occupancy field -> mesh

Examples:
    python reconstruct.py --checkpoint runs/svr/best.pt photo.jpg --output chair.obj
    python reconstruct.py --checkpoint runs/svr/best.pt photos/ --output meshes/ --resolution 256
    python reconstruct.py --checkpoint runs/svr/best.pt data/03001627_test.hdf5 --view 0 --output meshes/
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EXPORT_FORMATS = ("obj", "ply", "off", "stl", "glb")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")


@dataclass
class Item:
    """One input: its name (used for output file names) and either a file or an HDF5 row."""

    name: str
    path: Path | None = None
    pixels: np.ndarray | None = None  # uint8 [128, 128] already in network form (HDF5 views)
    centre: np.ndarray | None = None  # normalisation and axes of the source, when known (HDF5 rows),
    scale: float | None = None  # to map meshes back to the source frame
    up: str | None = None
    front: str | None = None


def collect_inputs(inputs: list[str], view: int, shapes: str | None) -> list[Item]:
    """Files, folders of images, and HDF5 files (every shape's `view`, or the `shapes` range)."""
    items: list[Item] = []
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"input not found: {path}")
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            items += [Item(p.stem, p) for p in files]
        elif path.suffix.lower() in (".h5", ".hdf5"):
            items += hdf5_items(path, view, shapes)
        else:
            items.append(Item(path.stem, path))
    return items


def hdf5_items(path: Path, view: int, shapes: str | None) -> list[Item]:
    from imnet.datafile import open_datafile
    from imnet.images import crop_view

    data = open_datafile(path)
    if data.pixels is None:
        raise ValueError(f"{path} holds no views ('pixels'); it cannot be used for single-view reconstruction")
    if not 0 <= view < data.pixels.shape[1]:
        raise ValueError(f"--view must be in 0..{data.pixels.shape[1] - 1}, got {view}")
    rows = range(len(data))
    if shapes:
        start, _, stop = shapes.partition(":")
        rows = range(int(start or 0), min(int(stop) if stop else int(start) + 1, len(data)))
    names = data.names or [f"shape_{i:05d}" for i in range(len(data))]
    items = []
    for i in rows:
        item = Item(f"{names[i].replace('/', '_')}_view{view:02d}", pixels=crop_view(data.pixels[i, view]))
        if data.meta is not None:
            item.centre, item.scale = np.asarray(data.meta["centre"][i]), float(data.meta["scale"][i])
            item.up, item.front = data.meta["up"][i], data.meta["front"][i]
        items.append(item)
    return items


def _output(args: argparse.Namespace) -> Path:
    return Path(args.output) if args.output else Path("reconstructions")


def _one_file(out: Path, n_items: int) -> bool:
    """Whether --output names the mesh file of a single input (else it is the folder of the meshes)."""
    return n_items == 1 and out.suffix.lower().lstrip(".") in EXPORT_FORMATS and not out.is_dir()


def output_path(args: argparse.Namespace, item: Item, n_items: int) -> Path:
    out = _output(args)
    return out if _one_file(out, n_items) else out / f"{item.name}.{args.format}"


def check_output(args: argparse.Namespace, n_items: int) -> None:
    """Refuse, before any work, an --output that would not be what was asked for or cannot be
    written; nothing is created here (folders are made when their first file is written)."""
    from imnet.atomic import check_output_dir

    out = _output(args)
    suffix = out.suffix.lower().lstrip(".")
    if n_items == 1 and suffix and suffix not in EXPORT_FORMATS and not out.is_dir():
        raise ValueError(f"--output {out}: .{suffix} is not a mesh format this program writes "
                         f"({', '.join(EXPORT_FORMATS)}); name a file with one of them, or a folder (without a suffix, or one that exists)")
    if n_items > 1 and suffix in EXPORT_FORMATS and not out.is_dir():
        raise ValueError(f"--output {out} names one mesh file, but there are {n_items} inputs; "
                         "give a folder (and --format for the meshes in it)")
    if _one_file(out, n_items):
        check_output_dir(out.parent, option="--output", file=out)
    else:
        check_output_dir(out, option="--output")


def build_parser() -> argparse.ArgumentParser:
    from imnet.config import ReconstructConfig
    from imnet.extract import MAX_RESOLUTION
    from imnet.images import BACKGROUND_TOLERANCE

    d = ReconstructConfig()
    p = argparse.ArgumentParser(
        description="Reconstruct 3D meshes from single images with a trained IM-NET SVR model.",
        epilog="Photos: the object is cropped from its background (alpha, or the border colour), padded to a "
        "square like the training views, made grayscale and resized to 128x128. Use --save-input to see "
        "what the network saw. 137x137 3D-R2N2 views are centre-cropped to 128x128 as in training.",
    )
    p.add_argument("inputs", nargs="+", help="image files (png/jpg/webp, any mode), folders of images, or "
                   "HDF5 files from data_prep (one view per shape, see --view)")
    p.add_argument("--checkpoint", required=True, help="SVR checkpoint (train.py svr), e.g. runs/svr/best.pt")
    p.add_argument("--output", "-o", help="output mesh file (one input) or folder (default: reconstructions/)")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="obj", help="mesh format when --output is a folder (default obj)")
    p.add_argument("--resolution", type=int, default=d.resolution, help=f"marching-cubes grid, any integer in 8..{MAX_RESOLUTION}, "
                   "e.g. 64, 100, 128, 256, 512 (default %(default)s)")
    p.add_argument("--level", type=float, default=d.level, help="iso-level of the occupancy field (default: the "
                   "checkpoint's, measured on its training shapes at the end of IM-AE training; 0.5 for older checkpoints)")
    p.add_argument("--method", choices=["auto", "certified", "coarse_to_fine", "dense"], default=d.method,
                   help="coarse_to_fine (auto): a coarse lattice, then the surface followed cell by cell; fast, "
                   "can miss detached parts that hold no point of its 32^3 lattice; certified: range bounds prove empty and full regions, exactly the dense mesh "
                   "but several times slower; dense: every grid point (reference)")
    p.add_argument("--max-batch-points", type=int, default=d.max_batch_points, help="points per decoder call; "
                   "bounds memory at any resolution (default %(default)s)")
    p.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N or mps (default auto)")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default=d.precision,
                   help="decoder precision: auto = bf16 where it runs fast (recent GPUs, CPUs with AMX), else fp32; "
                   "in bf16, points near the level are recomputed in fp32 (default auto)")
    p.add_argument("--kind", choices=["auto", "r2n2", "photo"], default="auto",
                   help="how to read image files: auto (137x137 views are R2N2, others photos), r2n2, photo")
    p.add_argument("--background-tolerance", type=float, default=BACKGROUND_TOLERANCE, help="photos without transparency: "
                   "colour difference (0-1 per channel) from the border's colour above which a pixel is the "
                   "object; lower it for objects close to the background colour, raise it for noisy "
                   "backgrounds (default %(default)s)")
    p.add_argument("--view", type=int, default=0, help="view index for HDF5 inputs (default 0)")
    p.add_argument("--shapes", help="rows of HDF5 inputs as START:STOP (default: all)")
    p.add_argument("--original-frame", action="store_true", help="map meshes back to the source mesh's frame "
                   "(its position, size and axes) when known: HDF5 inputs from data_prep")
    p.add_argument("--smooth", type=int, default=0, help="Taubin smoothing iterations (trimesh; default 0)")
    p.add_argument("--save-input", action="store_true", help="also write the 128x128 image the network saw (<name>_input.png)")
    p.add_argument("--save-code", action="store_true", help="also write the shape code z (<name>_code.npy)")
    p.add_argument("--preview", action="store_true", help="also write a PNG: input image beside a rendering of the mesh")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (FileNotFoundError, ValueError) as e:  # user mistakes: one line, no traceback
        print(f"reconstruct.py: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file system that refuses after all (full disk, read-only mount): one line too
        print(f"reconstruct.py: error: {e.filename or args.output}: {e.strerror or e}", file=sys.stderr)
        return 2


def run(args: argparse.Namespace) -> int:
    import trimesh

    from imnet.atomic import atomic_path, write_atomic
    from imnet.checkpoint import load_model
    from imnet.config import ReconstructConfig, check_resolution, format_config
    from imnet.images import preprocess
    from imnet.inference import reconstruct_image
    from imnet.mesh import denormalise, from_shapenet_axes, save_mesh
    from imnet.precision import resolve_device
    from imnet.progress import progress

    check_resolution(args.resolution)
    if args.max_batch_points < 1:
        raise ValueError("--max-batch-points must be positive")
    if not 0.0 <= args.background_tolerance < 1.0:
        raise ValueError(f"--background-tolerance must be in [0, 1), got {args.background_tolerance}")
    if args.level is not None and not 0.0 < args.level < 1.0:
        raise ValueError(f"--level must be in (0, 1), got {args.level}")
    config = ReconstructConfig(args.resolution, args.level, args.method, args.max_batch_points, args.device, args.precision)
    items = collect_inputs(args.inputs, args.view, args.shapes)
    check_output(args, len(items))
    device = resolve_device(config.device)
    model, _ = load_model(args.checkpoint, stage="svr", map_location=device)
    model.to(device).eval()
    if config.level is None:
        config.level = model.decoder.iso_level
    print(format_config(config))
    options = dict(resolution=config.resolution, level=config.level, method=config.method,
                   max_batch_points=config.max_batch_points, precision=config.precision)

    written, failed, empty = [], [], []
    bar = progress(items, desc="reconstructing", unit="image", disable=len(items) < 2)
    for item in bar:
        try:
            pixels = item.pixels if item.pixels is not None else preprocess(
                item.path, kind=args.kind, tolerance=args.background_tolerance)
        except ValueError as e:  # unreadable, too large, empty, no object: skip this one, report at the end
            failed.append(f"{item.name}: {e}")
            continue
        result = reconstruct_image(model, pixels, **options)
        out = output_path(args, item, len(items))
        mesh = result.mesh
        if len(mesh.faces) == 0:
            empty.append(item.name)
            # imnet.extract has already warned why; say which input it was and that nothing was written
            print(f"reconstruct.py: {item.name}: no surface at level {config.level:g}; nothing written", file=sys.stderr)
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        if args.save_input:
            write_atomic(out.with_name(out.stem + "_input.png"), _png(pixels))
        if args.save_code:
            with atomic_path(out.with_name(out.stem + "_code.npy")) as tmp, open(tmp, "wb") as f:
                np.save(f, result.code)
        if args.smooth:
            trimesh.smoothing.filter_taubin(mesh, iterations=args.smooth)
        saved = mesh
        if args.original_frame and item.scale is not None:
            saved = from_shapenet_axes(denormalise(mesh.copy(), item.centre, item.scale), item.up, item.front)
        save_mesh(saved, out)
        if args.preview:
            write_preview(out.with_name(out.stem + "_preview.png"), pixels, mesh)
        written.append(out)
        bar.write(f"{item.name}: {len(mesh.vertices)} vertices, {result.evaluations} decoder evaluations, "
                  f"{result.seconds:.2f} s -> {out}")

    for line in failed:
        print(f"reconstruct.py: skipped {line}", file=sys.stderr)
    where = f" in {_output(args)}" if len(written) != 1 else f": {written[0]}"
    print(f"{len(written)} meshes written{where}" + (f"; {len(empty)} empty" if empty else "") +
          (f"; {len(failed)} inputs skipped" if failed else ""))
    return 0 if written else 1


def _png(image: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_preview(path: Path, pixels: np.ndarray, mesh) -> None:
    """Input image and a shaded rendering of the mesh (in object space), side by side."""
    from PIL import Image

    from imnet.atomic import write_atomic
    from imnet.render import View, render_rgb

    rendering = render_rgb(mesh, View(azimuth=30.0, elevation=25.0), size=256)
    left = np.repeat(np.asarray(Image.fromarray(pixels).resize((256, 256)))[..., None], 3, axis=2)
    write_atomic(path, _png(np.concatenate([left, rendering], axis=1)))


if __name__ == "__main__":
    sys.exit(main())

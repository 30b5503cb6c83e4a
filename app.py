"""A local web app: upload a picture, get an interactive 3D model, turn it, relight it, download it.

    python app.py                                        # demo_out/svr/best.pt (after `make demo`)
    python app.py --checkpoint runs/svr/best.pt
    python app.py --checkpoint-dir runs/categories       # <dir>/<category>/best.pt: a category menu

then open http://127.0.0.1:7860. The page shows the picture with the square the network crops, the
128x128 grayscale image the network actually sees, the mesh in an interactive viewer (drag to rotate,
scroll to zoom, right-drag to pan), a turntable of rendered views, a view with a movable light, depth
and normal maps, the time each step took, and buttons to download the mesh as OBJ, PLY or GLB.

Needs the `app` extra (gradio, and pyrender for the renders): `pip install -e .[app]`; `make demo`
and `make test` install it. The work is done by plain functions (`load_picture`, `reconstruct`,
`render_views`, `relit_view`, `export_mesh`) that take and return arrays and meshes, on top of the
library (`imnet.images`, `imnet.inference`, `imnet.render`); `build_app` only wires them to Gradio
components, and `main` is the command line.

Models: only IM-SVR checkpoints (`train.py svr`) can reconstruct pictures. Checkpoints that cannot
(an IM-AE one, an unreadable file) are refused with a one-line reason: at start when none is
usable, otherwise in the page when their category is chosen.

Viewpoint of the single rendered views (relit view, depth, normals): IM-NET reconstructs the shape
in its canonical object frame and does not estimate the camera of the picture, so these views use a
fixed camera typical of the 3D-R2N2 renderings the network was trained on
(`imnet.render.DEFAULT_VIEW`: azimuth 45 degrees from the front, elevation 25 degrees, distance ratio 0.8).

Concurrency: Gradio runs each event in a worker thread. Sessions share only the models, which are
never written to after loading; each session's files live in its own temporary folder, and its mesh
in its own `gr.State`. OpenGL contexts are bound to threads and pyrender is not thread-safe, so all
shaded rendering holds one lock (depth and normal maps are ray cast and need none).
"""

from __future__ import annotations

import argparse
import html
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import trimesh
from skimage.transform import rescale

from imnet.checkpoint import CheckpointError, load_model
from imnet.config import check_resolution
from imnet.images import MAX_MEGAPIXELS, Box, ImageError, composite_on_white, load_image, preprocess
from imnet.inference import reconstruct_image
from imnet.mesh import save_mesh
from imnet.model import IMNet
from imnet.precision import resolve_device
from imnet.render import (
    DEFAULT_VIEW,
    PREVIEW_COLOR,
    Renderer,
    View,
    depth_image,
    direction_from,
    normal_image,
    render_depth_normals,
    render_rgb,
)

if TYPE_CHECKING:
    import gradio as gr

DEFAULT_CHECKPOINT = Path("demo_out/svr/best.pt")
MAX_UPLOAD = "100mb"
RESOLUTIONS = (16, 512)  # the page's extraction resolution slider
EXPORT_FORMATS = ("obj", "ply", "glb")

# Orbit radius of the page's 3D viewer: frames any shape of bounding-box diagonal 1 (the normalisation).
VIEWER_RADIUS = 1.6
TURNTABLE_AZIMUTHS = tuple(range(0, 360, 45))
# The default light of `imnet.render`: above and to the side of the default camera.
DEFAULT_LIGHT = (DEFAULT_VIEW.azimuth + 40.0, DEFAULT_VIEW.elevation + 35.0)

_VIEWER_MATERIAL = trimesh.visual.material.PBRMaterial(
    baseColorFactor=(*PREVIEW_COLOR, 1.0), metallicFactor=0.0, roughnessFactor=0.8, doubleSided=True
)

# One OpenGL context at a time: pyrender is not thread-safe and EGL contexts belong to a thread.
_GL_LOCK = threading.Lock()


# ----------------------------------------------------------------------------------------------
# Checkpoints and models


def find_checkpoints(
    checkpoint: str | Path | None = None, checkpoint_dir: str | Path | None = None
) -> dict[str, Path]:
    """The models to offer, by name.

    Args:
        checkpoint: one checkpoint file; named after its folder when it is called ``best.pt`` or
            ``last.pt`` (``runs/chair/best.pt`` -> "chair"), after the file otherwise.
        checkpoint_dir: a folder of category checkpoints, ``<dir>/<category>/best.pt`` (named after
            the category) or ``<dir>/<name>.pt``.
        With neither, ``demo_out/svr/best.pt`` (what ``make demo`` trains) when it exists.

    Returns:
        name -> path, sorted by name.

    Raises:
        FileNotFoundError: a named checkpoint is missing, the folder holds none, or there is no
            default checkpoint.
    """
    found: dict[str, Path] = {}
    if checkpoint is None and checkpoint_dir is None:
        if not DEFAULT_CHECKPOINT.is_file():
            raise FileNotFoundError(
                f"no checkpoint given and the default {DEFAULT_CHECKPOINT} does not exist; run `make demo` "
                "to train one, or pass --checkpoint PATH or --checkpoint-dir DIR"
            )
        checkpoint = DEFAULT_CHECKPOINT
    if checkpoint is not None:
        path = Path(checkpoint)
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint not found: {path}; check the --checkpoint path")
        found[path.parent.name if path.stem in ("best", "last") and path.parent.name else path.stem] = path
    if checkpoint_dir is not None:
        folder = Path(checkpoint_dir)
        if not folder.is_dir():
            raise FileNotFoundError(f"checkpoint folder not found: {folder}; check the --checkpoint-dir path")
        paths = {p.parent.name: p for p in folder.glob("*/best.pt")} | {p.stem: p for p in folder.glob("*.pt")}
        if not paths:
            raise FileNotFoundError(
                f"no checkpoints in {folder}: expected {folder}/<category>/best.pt or {folder}/<name>.pt"
            )
        found |= paths
    return dict(sorted(found.items()))


def load_models(
    paths: dict[str, Path], device: str | torch.device = "cpu"
) -> tuple[dict[str, IMNet], dict[str, str]]:
    """Load every IM-SVR checkpoint once, in eval mode, without gradients: the app only reads them.

    Returns:
        The models by name, and the checkpoints that were refused by name with the one-line reason
        (`imnet.checkpoint.load_model`: unreadable, not an imnet checkpoint, or an IM-AE checkpoint,
        whose image encoder is untrained).
    """
    models, refused = {}, {}
    for name, path in paths.items():
        try:
            model, _ = load_model(path, stage="svr", map_location=device)
        except CheckpointError as e:
            refused[name] = str(e)
            continue
        models[name] = model.to(device).eval().requires_grad_(False)
    return models, refused


# ----------------------------------------------------------------------------------------------
# Picture -> mesh


@dataclass
class Picture:
    """An uploaded picture and what the network is shown of it."""

    image: np.ndarray  # uint8 [H, W, 3], the picture on white with the crop square in red (<= 512 px)
    pixels: np.ndarray  # uint8 [128, 128], the network input (object dark on white)
    box: Box  # the square cropped from the picture, in its pixels
    seconds: float


def load_picture(path: str | Path, *, max_megapixels: float = MAX_MEGAPIXELS, display_size: int = 512) -> Picture:
    """Read a picture and preprocess it into the network input (:func:`imnet.images.preprocess`).

    Args:
        path: an image file Pillow reads (PNG, JPEG, WebP, ...).
        max_megapixels: larger pictures are refused from their header, before decoding.
        display_size: longest side of `Picture.image`; larger pictures are shrunk for display.

    Raises:
        ImageError: not an image, too large, empty, or no object found. The message names the file
            by its name only (an upload's full path is a server detail).
    """
    start = time.perf_counter()
    path = Path(path)
    try:
        rgba = load_image(path, max_megapixels=max_megapixels)
        pixels, box = preprocess(rgba, return_box=True)
    except ImageError as e:
        message = str(e).replace(str(path), path.name)
        raise ImageError(message if message.startswith(path.name) else f"{path.name}: {message}") from None
    image = _with_box(composite_on_white(rgba), box, display_size)
    return Picture(image, pixels, box, time.perf_counter() - start)


def _with_box(gray: np.ndarray, box: Box, display_size: int) -> np.ndarray:
    """Gray [H, W] in [0, 1] -> uint8 RGB with the crop square drawn in red, shrunk to `display_size`.

    Where the square reaches past the picture, the picture is padded with white, as the crop is.
    """
    height, width = gray.shape
    pad = ((max(0, -box.top), max(0, box.bottom - height)), (max(0, -box.left), max(0, box.right - width)))
    gray = np.pad(gray, pad, constant_values=1.0)
    top, left = box.top + pad[0][0], box.left + pad[1][0]
    bottom, right = box.bottom + pad[0][0], box.right + pad[1][0]
    scale = min(1.0, display_size / max(gray.shape))
    if scale < 1.0:
        gray = rescale(gray, scale, anti_aliasing=True)
        top, left, bottom, right = (round(v * scale) for v in (top, left, bottom, right))
    rgb = np.repeat(np.rint(gray * 255).astype(np.uint8)[..., None], 3, axis=2)
    line = max(1, round(max(gray.shape) / 150))
    rows, cols = np.ogrid[: gray.shape[0], : gray.shape[1]]
    outer = (rows >= top) & (rows < bottom) & (cols >= left) & (cols < right)
    inner = (rows >= top + line) & (rows < bottom - line) & (cols >= left + line) & (cols < right - line)
    rgb[outer & ~inner] = (220, 30, 30)
    return rgb


def model_level(model: IMNet) -> float:
    """The model's own iso-level (`Decoder.level`) on the slider's 0.05 steps."""
    return round(model.decoder.iso_level * 20) / 20


class EmptyMeshError(ValueError):
    """The decoder's field stays below the iso-level everywhere: there is no surface to show."""


def reconstruct(
    model: IMNet, pixels: np.ndarray, *, resolution: int = 128, level: float | None = None, half: bool = False
) -> tuple[trimesh.Trimesh, float]:
    """Encode a 128x128 network input and extract the mesh (:func:`imnet.inference.reconstruct_image`)
    at `level` (None: the model's own, `Decoder.level`).

    Returns:
        mesh in normalised object space [-0.5, 0.5]^3, and the seconds spent (encoder + extraction).

    Raises:
        EmptyMeshError: nothing exceeds `level`.
    """
    level = model.decoder.iso_level if level is None else level
    result = reconstruct_image(model, pixels, resolution=resolution, level=level, precision="bf16" if half else "auto")
    if result.mesh.is_empty:
        raise EmptyMeshError(
            f"the network's occupancy stays below the iso-level {level:g} everywhere, so there is no "
            "surface; lower the iso-level, or try a picture of an object of the model's category"
        )
    return result.mesh, result.seconds


# ----------------------------------------------------------------------------------------------
# Renders


@dataclass
class Views:
    """The rendered images of one mesh; all uint8, white background."""

    turntable: list[np.ndarray]  # [size, size, 3] per azimuth of TURNTABLE_AZIMUTHS
    relit: np.ndarray  # [size, size, 3] from DEFAULT_VIEW, lit from the requested direction
    depth: np.ndarray  # [size, size], darker = nearer
    normals: np.ndarray  # [size, size, 3], camera-frame normal (x right, y up, z to the viewer) as RGB
    seconds: float


def render_views(
    mesh: trimesh.Trimesh,
    *,
    light: tuple[float, float] = DEFAULT_LIGHT,
    view: View = DEFAULT_VIEW,
    azimuths: tuple[float, ...] = TURNTABLE_AZIMUTHS,
    size: int = 256,
) -> Views:
    """Turntable, relit view, depth and normal maps of a mesh in normalised object space.

    Args:
        mesh: non-empty, in [-0.5, 0.5]^3.
        light: (azimuth, elevation) in degrees of the relit view's light (`imnet.render.direction_from`).
        view: camera of the relit view and of the depth and normal maps.
        azimuths: turntable camera azimuths in degrees (at the elevation and distance of `view`).
        size: side of every image in pixels.
    """
    start = time.perf_counter()
    cameras = np.stack([View(azimuth, view.elevation, view.distance_ratio).camera() for azimuth in azimuths])
    with _GL_LOCK, Renderer(size) as renderer:
        turntable = list(renderer.shaded(mesh, cameras, color=PREVIEW_COLOR))
        relit = renderer.shaded(mesh, view.camera()[None], color=PREVIEW_COLOR, light_direction=direction_from(*light))[0]
    depth, normals = render_depth_normals(mesh, view, size)
    return Views(turntable, relit, depth_image(depth), normal_image(normals), time.perf_counter() - start)


def relit_view(
    mesh: trimesh.Trimesh, light: tuple[float, float], *, view: View = DEFAULT_VIEW, size: int = 256
) -> np.ndarray:
    """The mesh from `view`, lit from (azimuth, elevation) `light` in degrees: uint8 [size, size, 3]."""
    with _GL_LOCK:
        return render_rgb(mesh, view, size, light_direction=direction_from(*light))


# ----------------------------------------------------------------------------------------------
# Files


def export_mesh(mesh: trimesh.Trimesh, folder: str | Path, stem: str = "reconstruction") -> dict[str, Path]:
    """Write the mesh as OBJ, PLY and GLB into `folder`: format -> path (``<folder>/<stem>.<format>``).

    OBJ and PLY hold the bare geometry. The GLB, which the page's viewer shows, also has vertex normals
    and a matte light-blue material: without them glTF viewers draw a faceted, flat white shape.
    """
    paths = {fmt: Path(folder) / f"{stem}.{fmt}" for fmt in EXPORT_FORMATS}
    for fmt, path in paths.items():
        if fmt == "glb":
            shown = mesh.copy()
            shown.visual = trimesh.visual.TextureVisuals(material=_VIEWER_MATERIAL)
            save_mesh(shown, path, include_normals=True)
        else:
            save_mesh(mesh, path)
    return paths


def safe_stem(filename: str | None) -> str:
    """A file-name stem made only of letters, digits, '-' and '_' ("reconstruction" if none is left)."""
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(filename or "").stem).strip("_")
    return stem[:64] or "reconstruction"


# ----------------------------------------------------------------------------------------------
# The web page


@dataclass
class Session:
    """What one browser session keeps between events: its mesh and the folder of its files."""

    mesh: trimesh.Trimesh
    folder: Path
    _finalizer: weakref.finalize = field(init=False, repr=False)

    def __post_init__(self):
        # The folder goes when the session is replaced, expires, or the server stops.
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.folder, ignore_errors=True)

    def close(self) -> None:
        self._finalizer()


def _close_session(session: Session | None) -> None:
    if session is not None:
        session.close()


CSS = """
#network-input img { image-rendering: pixelated; }
#status { min-height: 4em; }
"""


def _viewer_camera(view: View) -> tuple[float, float, float]:
    """Model3D's (alpha, beta, radius) for `view`: Babylon's orbit camera measures alpha (degrees) from
    +x towards +z and beta (degrees) down from +y."""
    return (view.azimuth - 90.0, 90.0 - view.elevation, VIEWER_RADIUS)


def build_app(
    model_paths: dict[str, Path] | str | Path,
    *,
    device: str | torch.device = "auto",
    default_resolution: int | None = None,
    half: bool = False,
    max_megapixels: float = MAX_MEGAPIXELS,
    concurrency: int = 2,
) -> gr.Blocks:
    """The Gradio app (a `gr.Blocks`, not started; see :func:`launch`).

    Args:
        model_paths: name -> checkpoint (:func:`find_checkpoints`), or one checkpoint path. With
            several, the page offers a category menu.
        device: "auto", "cpu", "cuda", "cuda:N" or "mps" (:func:`imnet.precision.resolve_device`).
        default_resolution: initial extraction resolution (16-512, the slider's range); None: 128 on a
            GPU, 64 on a CPU.
        half: run the decoder in half precision (CUDA: float16).
        max_megapixels: larger pictures are refused with a message.
        concurrency: events that may run at once (each in a worker thread, across all sessions).

    Checkpoints that are not usable IM-SVR ones stay in the category menu; choosing one shows why it
    was refused.

    The sessions' meshes live in one temporary folder, removed when the app is garbage collected,
    at interpreter exit, or at once by ``demo.remove_workspace()`` (what :func:`main` does on stopping).

    Raises:
        CheckpointError: no checkpoint can be used (the message is the first one's reason).
        ValueError: an unusable device, or a default resolution outside the slider's range.
    """
    import gradio as gr  # here, not at the top: it takes seconds, and the functions above do not need it

    if isinstance(model_paths, (str, Path)):
        model_paths = find_checkpoints(checkpoint=model_paths)
    device = resolve_device(device) if isinstance(device, str) else device
    models, refused = load_models(model_paths, device)
    if not models:
        raise CheckpointError(next(iter(refused.values())))
    for name, reason in refused.items():
        print(f"warning: the {name} model cannot be used: {reason}", file=sys.stderr)
    names = list(model_paths)
    if default_resolution is None:
        default_resolution = 128 if device.type == "cuda" else 64
    check_resolution(default_resolution, low=RESOLUTIONS[0], high=RESOLUTIONS[1])
    workspace: Path  # made below, beside the finalizer that removes it

    def failed(title: str, message: str, session: Session | None) -> tuple:
        """The page after a failed event: the reason under the button, and nothing left of an earlier
        picture (its mesh shown under the message would look like this picture's)."""
        _close_session(session)
        cleared = (None, None, None, None, [], None, None)  # picture, input, viewer, relit, turntable, depth, normals
        buttons = tuple(gr.DownloadButton(value=None, interactive=False) for _ in EXPORT_FORMATS)
        return (*cleared, *buttons, f"**{title}**: {html.escape(message)}", None)

    def run(upload, category, resolution, level, light_azimuth, light_elevation, session):
        if upload is None:
            return failed("No picture", "upload a picture first (PNG, JPEG, WebP, ...)", session)
        name = Path(upload).name
        if category in refused:
            return failed("Cannot use this model", refused[category], session)
        try:
            picture = load_picture(upload, max_megapixels=max_megapixels)
            mesh, reconstruct_seconds = reconstruct(
                models[category], picture.pixels, resolution=int(resolution), level=float(level), half=half
            )
        except ValueError as e:  # ImageError, EmptyMeshError, a resolution extraction refuses
            return failed("Cannot reconstruct this picture", str(e), session)
        except (MemoryError, torch.OutOfMemoryError):
            return failed("Out of memory", f"at resolution {int(resolution)}; choose a lower one", session)
        views = render_views(mesh, light=(light_azimuth, light_elevation))
        start = time.perf_counter()
        new_session = Session(mesh, Path(tempfile.mkdtemp(dir=workspace)))
        files = export_mesh(mesh, new_session.folder, safe_stem(name))
        export_seconds = time.perf_counter() - start
        _close_session(session)
        status = (
            f"**{html.escape(name)}** with the **{html.escape(category)}** model: "
            f"{len(mesh.vertices):,} vertices, {len(mesh.faces):,} faces at resolution {int(resolution)}, "
            f"iso-level {float(level):g}  \n"
            f"preprocess {picture.seconds:.2f} s · encode + extract {reconstruct_seconds:.2f} s · "
            f"render {views.seconds:.2f} s · export {export_seconds:.2f} s"
        )
        return (
            picture.image,
            picture.pixels,
            str(files["glb"]),
            views.relit,
            views.turntable,
            views.depth,
            views.normals,
            *(gr.DownloadButton(value=str(files[fmt]), interactive=True) for fmt in EXPORT_FORMATS),
            status,
            new_session,
        )

    def relight(session, light_azimuth, light_elevation):
        if session is None:
            return None, ""
        start = time.perf_counter()
        image = relit_view(session.mesh, (light_azimuth, light_elevation))
        return image, f"relit in {time.perf_counter() - start:.2f} s"

    with gr.Blocks(title="IM-NET: picture to 3D model", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            "## IM-NET: one picture to a 3D model\n"
            "Upload a photo or rendering of a single object on a plain background. The network sees a "
            "128x128 grayscale crop and predicts an occupancy field; the mesh is its iso-surface."
        )
        session = gr.State(None, delete_callback=_close_session)
        with gr.Row():
            with gr.Column(scale=1, min_width=280):
                upload = gr.File(label="Picture", file_types=["image"], type="filepath", elem_id="upload")
                category = gr.Dropdown(names, value=next(iter(models)), label="Category model", visible=len(names) > 1,
                                       elem_id="category")
                resolution = gr.Slider(
                    *RESOLUTIONS, value=default_resolution, step=16, label="Extraction resolution",
                    info="marching-cubes grid per axis; 256 and more take a while on a CPU", elem_id="resolution",
                )
                level = gr.Slider(0.05, 0.95, value=model_level(models[next(iter(models))]), step=0.05, label="Iso-level",
                                  info="lower: thicker shape, higher: thinner; starts at the model's own "
                                  "(measured on its training shapes)", elem_id="level")
                button = gr.Button("Reconstruct", variant="primary", elem_id="reconstruct")
                status = gr.Markdown("", elem_id="status")
            with gr.Column(scale=1, min_width=280):
                with gr.Row():
                    picture = gr.Image(label="Picture + crop",
                                       interactive=False, height=256, elem_id="picture")
                    network_input = gr.Image(label="Network input", interactive=False,
                                             height=256, image_mode="L", elem_id="network-input")
        with gr.Row():
            with gr.Column(scale=3):
                viewer = gr.Model3D(label="3D model (drag: rotate, scroll: zoom, right-drag: pan)",
                                    height=420, clear_color=(0.96, 0.96, 0.96, 1.0), elem_id="viewer",
                                    camera_position=_viewer_camera(DEFAULT_VIEW))
                with gr.Row():
                    downloads = [
                        gr.DownloadButton(f"Download .{fmt}", interactive=False, size="sm", elem_id=f"download-{fmt}")
                        for fmt in EXPORT_FORMATS
                    ]
            with gr.Column(scale=2):
                relit = gr.Image(label=f"Relit view (azimuth {DEFAULT_VIEW.azimuth:g}°, elevation {DEFAULT_VIEW.elevation:g}°)",
                                 interactive=False,
                                 height=300, elem_id="relit")
                light_azimuth = gr.Slider(-180, 180, value=DEFAULT_LIGHT[0], step=5, label="Light azimuth (°)",
                                          elem_id="light-azimuth")
                light_elevation = gr.Slider(-60, 90, value=DEFAULT_LIGHT[1], step=5, label="Light elevation (°)",
                                            elem_id="light-elevation")
                relight_info = gr.Markdown("")
        gr.Markdown(f"**Turntable**: azimuth {', '.join(f'{a:g}°' for a in TURNTABLE_AZIMUTHS)} (0°: front), "
                    f"elevation {DEFAULT_VIEW.elevation:g}°")
        turntable = gr.Gallery(show_label=False, columns=8, height=190, object_fit="contain", elem_id="turntable")
        with gr.Row():
            depth = gr.Image(label="Depth from the default view (darker: nearer)", interactive=False,
                             height=256, elem_id="depth")
            normals = gr.Image(label="Normals from the default view (x: red, y: green, z: blue)",
                               interactive=False, height=256, elem_id="normals")

        inputs = [upload, category, resolution, level, light_azimuth, light_elevation, session]
        outputs = [picture, network_input, viewer, relit, turntable, depth, normals, *downloads, status, session]
        def level_of_category(name):  # the slider follows the chosen model's own level
            return model_level(models[name]) if name in models else gr.update()

        category.change(level_of_category, category, level)
        gr.on([upload.upload, button.click], run, inputs, outputs, concurrency_limit=concurrency,
              concurrency_id="reconstruct")
        gr.on([light_azimuth.release, light_elevation.release], relight,
              [session, light_azimuth, light_elevation], [relit, relight_info], concurrency_limit=concurrency,
              concurrency_id="reconstruct")

    workspace = Path(tempfile.mkdtemp(prefix="imnet-app-"))  # every session's folder lives in it
    demo.remove_workspace = weakref.finalize(demo, shutil.rmtree, workspace, ignore_errors=True)
    return demo


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int = 7860, *, block: bool = True, quiet: bool = False) -> None:
    """Serve the app; with `block=False` return once it is up (stop it with ``demo.close()``)."""
    import gradio as gr

    theme = gr.themes.Soft(
        # System fonts: the default theme would fetch web fonts, and the app must work offline.
        font=["system-ui", "Segoe UI", "Roboto", "Helvetica", "Arial", "sans-serif"],
        font_mono=["ui-monospace", "Consolas", "monospace"],
    )
    demo.queue().launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        share=False,
        ssr_mode=False,
        max_file_size=MAX_UPLOAD,
        theme=theme,
        css=CSS,
        quiet=quiet,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python app.py", description="Local web app: picture in, interactive 3D model out."
    )
    parser.add_argument("--checkpoint", type=Path, help=f"SVR checkpoint (default: {DEFAULT_CHECKPOINT}, if present)")
    parser.add_argument("--checkpoint-dir", type=Path,
                        help="folder of category checkpoints <dir>/<category>/best.pt; adds a category menu")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on; 0.0.0.0 exposes the app to your network")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default %(default)s)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument("--resolution", type=int, default=None, help=f"initial extraction resolution, "
                        f"{RESOLUTIONS[0]}-{RESOLUTIONS[1]} (default: 128 on a GPU, 64 on a CPU)")
    parser.add_argument("--half", action="store_true", help="half-precision decoder (GPU)")
    parser.add_argument("--concurrency", type=int, default=2, help="reconstructions that may run at once")
    args = parser.parse_args(argv)
    # A SIGTERM (kill, systemd, docker stop) stops the app like Ctrl-C: the server closes and the
    # temporary folder with every session's meshes is removed on the way out (build_app's finalizer).
    previous = signal.signal(signal.SIGTERM, _interrupt)
    demo = None
    try:
        if args.resolution is not None:  # before the slow imports of build_app
            check_resolution(args.resolution, low=RESOLUTIONS[0], high=RESOLUTIONS[1])
        paths = find_checkpoints(args.checkpoint, args.checkpoint_dir)
        demo = build_app(paths, device=args.device, default_resolution=args.resolution, half=args.half,
                         concurrency=args.concurrency)
        print("models: " + ", ".join(f"{name} ({path})" for name, path in paths.items()))
        launch(demo, args.host, args.port)  # returns when stopped while serving (Gradio catches the interrupt)
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # while loading, or before Gradio itself waits for the interrupt
        if demo is None:
            print(f"{parser.prog}: stopped before the app was up", file=sys.stderr)
            return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if demo is not None:
            demo.close(verbose=False)
            demo.remove_workspace()  # now, rather than at interpreter exit
    print(f"{parser.prog}: stopped")
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())

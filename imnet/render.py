"""Headless rendering of meshes in normalised object space: 3D-R2N2-style views, previews, depth and
normal maps.

Shaded images come from pyrender on an EGL (GPU-less capable) OpenGL context; pyrender is imported on
first use, so ``import imnet`` never needs OpenGL. Depth and normal maps are ray cast with trimesh
instead, which gives exact float depths and the true normal of the triangle seen in each pixel.

Cameras follow 3D-R2N2's ``rendering_metadata.txt``: one row per view, float32 [5] =
(azimuth deg, elevation deg, in-plane rotation deg, distance ratio, field of view deg). What those
numbers meant to R2N2's Blender script, checked against R2N2's own images (tests/data/r2n2_sample):

- The object (bounding-box centre at the origin, bounding-box diagonal 1) is looked at from distance
  ``distance_ratio * 1.75`` (:data:`R2N2_MAX_CAMERA_DISTANCE`).
- Azimuth 0 looks at the object's front. For meshes in ShapeNetCore v2 orientation (y up, front
  towards -z, the orientation of this project's synthetic shapes) the camera sits at
  ``d * (sin(az) cos(el), sin(el), -cos(az) cos(el))``: azimuth 90 looks from +x. R2N2 itself
  rendered ShapeNetCore v1 meshes, which are the v2 meshes turned by -90 degrees about y (front
  towards +x); rotate v1 meshes by +90 degrees about y, (x, z) -> (z, -x), to reproduce R2N2's
  images from them.
- The recorded field of view (always 25) was never applied: Blender kept its default 35 mm lens on a
  32 mm sensor, a field of view of 49.13 degrees (:data:`R2N2_LENS_FOV`). :func:`lens_fov` maps the
  recorded value to the one that was rendered, so R2N2 metadata rows reproduce R2N2's framing.

Previews, depth and normal maps look from a :class:`View` (azimuth, elevation, distance ratio),
by default :data:`DEFAULT_VIEW`, a camera typical of the R2N2 renderings.

Images are arrays with row 0 at the top; the background is white (255).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import numpy as np
import trimesh

from imnet.mesh import check_mesh

__all__ = [
    "R2N2_MAX_CAMERA_DISTANCE",
    "R2N2_RECORDED_FOV",
    "R2N2_LENS_FOV",
    "View",
    "DEFAULT_VIEW",
    "PREVIEW_COLOR",
    "lens_fov",
    "camera_pose",
    "direction_from",
    "sample_r2n2_cameras",
    "Renderer",
    "render_views",
    "render_rgb",
    "render_depth_normals",
    "depth_image",
    "normal_image",
]

R2N2_MAX_CAMERA_DISTANCE = 1.75
R2N2_RECORDED_FOV = 25.0
R2N2_LENS_FOV = float(np.degrees(2 * np.arctan(16.0 / 35.0)))  # 35 mm lens, 32 mm wide sensor

# R2N2's metadata: azimuth uniform over the circle, elevation and distance ratio in these ranges
# (those seen in ShapeNetRendering's rendering_metadata.txt files).
R2N2_ELEVATION_RANGE = (25.0, 30.0)
R2N2_DISTANCE_RATIO_RANGE = (0.65, 0.95)

# Shading is Lambertian (linear, no gamma, like R2N2's images) and computed per face on the CPU,
# then rasterised unlit by OpenGL. That is several times faster than pyrender's physically based
# shader on a software (llvmpipe) context, and lights every face from the side the camera sees,
# whatever its winding (ShapeNet's faces are oriented inconsistently). A key light above and to the
# left of the camera plus a weak fill light at the camera shade faces towards the viewer, upward
# faces (a seat, a table top) and side faces differently.
_KEY_LIGHT_OFFSET = (40.0, 35.0)  # (azimuth, elevation) in degrees, relative to the camera
_KEY_LIGHT = 0.7
_FILL_LIGHT = 0.3
_AMBIENT = 0.15
_VIEW_GRAY = 0.5  # R2N2's look: mean object pixel about 95 on a chair, dark sides, light tops


@dataclass(frozen=True)
class View:
    """A camera looking at the origin, in R2N2's convention: azimuth 0 looks at the object's front,
    elevation 90 from above; distance ``distance_ratio * 1.75`` (degrees and object units)."""

    azimuth: float = 45.0
    elevation: float = 25.0
    distance_ratio: float = 0.8

    def camera(self) -> np.ndarray:
        """The R2N2 camera row, float [5]: (azimuth, elevation, in-plane 0, distance ratio, fov)."""
        return np.array([self.azimuth, self.elevation, 0.0, self.distance_ratio, R2N2_RECORDED_FOV])


DEFAULT_VIEW = View()
"""Where previews, reports and the web app look from when the picture's camera is unknown: from the
front-right and a little above, at a distance typical of the R2N2 renderings."""

PREVIEW_COLOR = (0.75, 0.8, 0.9)  # light blue, the mesh colour of previews and the web app


def lens_fov(recorded_fov: float | np.ndarray) -> float | np.ndarray:
    """Field of view (degrees) actually rendered for a field of view recorded in R2N2's metadata.

    The recorded 25 degrees maps to R2N2's real 49.13 degree lens; other values scale the focal
    length in proportion (``tan(fov / 2)`` is multiplied by the same factor), so a smaller recorded
    value still zooms in.
    """
    factor = np.tan(np.radians(R2N2_LENS_FOV) / 2) / np.tan(np.radians(R2N2_RECORDED_FOV) / 2)
    return np.degrees(2 * np.arctan(np.tan(np.radians(recorded_fov) / 2) * factor))


def camera_pose(
    azimuth: float, elevation: float, distance_ratio: float, inplane_rotation: float = 0.0
) -> np.ndarray:
    """Camera-to-object transform of an R2N2 camera looking at the origin.

    The camera frame is OpenGL's: x right, y up, looking down -z. A positive in-plane rotation rolls
    the camera counter-clockwise about its viewing axis (the image content turns clockwise).

    Returns:
        float64 [4, 4].
    """
    az, el = np.radians(azimuth), np.radians(elevation)
    distance = distance_ratio * R2N2_MAX_CAMERA_DISTANCE
    eye = distance * np.array([np.sin(az) * np.cos(el), np.sin(el), -np.cos(az) * np.cos(el)])
    backward = eye / np.linalg.norm(eye)  # camera +z
    right = np.cross([0.0, 1.0, 0.0], backward)
    right /= np.linalg.norm(right)
    up = np.cross(backward, right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, up, backward], axis=1)
    pose[:3, 3] = eye
    roll = trimesh.transformations.rotation_matrix(np.radians(inplane_rotation), [0, 0, 1])
    return pose @ roll


def direction_from(azimuth: float, elevation: float) -> np.ndarray:
    """Unit vector [3] from the origin towards a point at (azimuth, elevation) in degrees, in the
    camera convention above (azimuth 0: in front, i.e. -z for ShapeNet v2; elevation 90: above).
    Used for light directions."""
    return camera_pose(azimuth, elevation, 1.0)[:3, 2]


def sample_r2n2_cameras(n_views: int = 24, rng: np.random.Generator | int | None = None) -> np.ndarray:
    """Random cameras distributed like 3D-R2N2's renderings.

    Azimuth uniform in [0, 360), elevation uniform in [25, 30], in-plane rotation 0, distance ratio
    uniform in [0.65, 0.95], recorded field of view 25 (see :func:`lens_fov`).

    Args:
        n_views: number of cameras.
        rng: a numpy Generator or a seed for one.

    Returns:
        float32 [n_views, 5] rows of (azimuth, elevation, in-plane rotation, distance ratio, fov).
    """
    rng = np.random.default_rng(rng)
    cameras = np.zeros((n_views, 5), dtype=np.float32)
    cameras[:, 0] = rng.uniform(0.0, 360.0, n_views)
    cameras[:, 1] = rng.uniform(*R2N2_ELEVATION_RANGE, n_views)
    cameras[:, 3] = rng.uniform(*R2N2_DISTANCE_RATIO_RANGE, n_views)
    cameras[:, 4] = R2N2_RECORDED_FOV
    return cameras


def _import_pyrender():
    # EGL renders without a display; the variable must be set before PyOpenGL is first imported.
    os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    import pyrender

    return pyrender


def _release(offscreen) -> None:
    """Free a pyrender OffscreenRenderer's OpenGL objects and context.

    pyrender's own ``delete()`` also terminates the EGL display, which all contexts of the process
    share, so every other live Renderer would fail on its next call; here only this context goes.
    """
    from pyrender.platforms.egl import EGLPlatform

    platform = offscreen._platform
    platform.make_current()
    offscreen._renderer.delete()
    if isinstance(platform, EGLPlatform):
        from OpenGL.EGL import EGL_NO_CONTEXT, EGL_NO_SURFACE, eglDestroyContext, eglMakeCurrent

        eglMakeCurrent(platform._egl_display, EGL_NO_SURFACE, EGL_NO_SURFACE, EGL_NO_CONTEXT)
        eglDestroyContext(platform._egl_display, platform._egl_context)
    else:
        platform.delete_context()
    # Leave pyrender's __del__ nothing to free a second time.
    offscreen._renderer = offscreen._platform = None


def _face_colors(
    mesh: trimesh.Trimesh, pose: np.ndarray, key_direction: np.ndarray, albedo: np.ndarray
) -> np.ndarray:
    """Lambertian RGBA colour of every face seen from a camera at ``pose``: float32 [F, 4]."""
    normals = np.asarray(mesh.face_normals)
    centroids = np.asarray(mesh.triangles_center)
    # Turn each normal towards the camera so that both sides of a face shade alike.
    normals = normals * np.sign(np.einsum("ij,ij->i", pose[:3, 3] - centroids, normals))[:, None]
    radiance = (
        _AMBIENT
        + _KEY_LIGHT * np.clip(normals @ key_direction, 0.0, None)
        + _FILL_LIGHT * np.clip(normals @ pose[:3, 2], 0.0, None)
    )
    colors = np.ones((len(normals), 4), dtype=np.float32)
    colors[:, :3] = np.clip(radiance[:, None] * albedo, 0.0, 1.0)
    return colors


class Renderer:
    """An offscreen OpenGL renderer of a fixed square size; reuse one for many meshes and views.

    Each new renderer costs about 0.2 s (an OpenGL context, and shader compilation on its first
    image), more than rendering 24 views of a typical ShapeNet mesh with it. Its context is made
    current in the calling thread: use a renderer from one thread at a time.

    Example:
        >>> with Renderer(size=137) as renderer:                       # doctest: +SKIP
        ...     pixels = renderer.views(mesh, sample_r2n2_cameras(24, rng=0))
    """

    def __init__(self, size: int = 137):
        if size < 1:
            raise ValueError(f"size must be a positive number of pixels, got {size}")
        self.size = int(size)
        self._pyrender = _import_pyrender()
        self._renderer = self._pyrender.OffscreenRenderer(self.size, self.size)

    def close(self) -> None:
        """Release the OpenGL context (also done on leaving a ``with`` block)."""
        if self._renderer is not None:
            _release(self._renderer)
            self._renderer = None

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        # Without this, pyrender's own finaliser would terminate the EGL display (see _release).
        with contextlib.suppress(Exception):
            self.close()

    def shaded(
        self,
        mesh: trimesh.Trimesh,
        cameras: np.ndarray,
        *,
        color: tuple[float, float, float] = (0.7, 0.7, 0.7),
        light_direction: np.ndarray | None = None,
    ) -> np.ndarray:
        """Shaded colour images of ``mesh`` on white, one per camera.

        Args:
            mesh: in normalised object space (bounding-box diagonal about 1, centred at the origin).
            cameras: float [V, 5] R2N2 camera rows (see the module docstring).
            color: RGB albedo in [0, 1].
            light_direction: [3] direction from the object towards a distant light, in object space;
                None puts it above and to the left of each camera.
                A weak fill light always shines from the camera.

        Returns:
            uint8 [V, size, size, 3].
        """
        if self._renderer is None:
            raise RuntimeError("this Renderer was closed; create a new one")
        check_mesh(mesh, name="the mesh to render")
        cameras = np.asarray(cameras, dtype=np.float64)
        if cameras.ndim != 2 or cameras.shape[1] != 5:
            raise ValueError(
                f"cameras must be [V, 5] rows of (azimuth, elevation, in-plane rotation, distance ratio, "
                f"fov), got shape {cameras.shape}"
            )
        pyrender = self._pyrender
        key_direction = None
        if light_direction is not None:
            key_direction = np.asarray(light_direction, dtype=np.float64)
            if key_direction.shape != (3,) or not np.linalg.norm(key_direction) > 0:
                raise ValueError(f"light_direction must be a non-zero 3-vector, got {light_direction!r}")
            key_direction = key_direction / np.linalg.norm(key_direction)

        triangles = np.asarray(mesh.vertices, dtype=np.float64)[np.asarray(mesh.faces)]  # [F, 3, 3]
        positions = triangles.reshape(-1, 3).astype(np.float32)
        scene = pyrender.Scene(bg_color=[1.0, 1.0, 1.0, 1.0])
        camera = scene.add(pyrender.PerspectiveCamera(yfov=1.0, znear=0.05, zfar=10.0))
        # Double-sided: no face may be culled, since winding says nothing about the visible side.
        material = pyrender.MetallicRoughnessMaterial(baseColorFactor=[1.0, 1.0, 1.0, 1.0], doubleSided=True)

        images = np.empty((len(cameras), self.size, self.size, 3), dtype=np.uint8)
        for i, (azimuth, elevation, inplane, ratio, fov) in enumerate(cameras):
            pose = camera_pose(azimuth, elevation, ratio, inplane)
            if light_direction is None:
                key_elevation = min(elevation + _KEY_LIGHT_OFFSET[1], 89.0)
                key_direction = camera_pose(azimuth + _KEY_LIGHT_OFFSET[0], key_elevation, 1.0)[:3, 2]
            colors = _face_colors(mesh, pose, key_direction, np.asarray(color, dtype=np.float64))
            primitive = pyrender.Primitive(
                positions=positions, color_0=np.repeat(colors, 3, axis=0), material=material
            )
            node = scene.add(pyrender.Mesh([primitive]))
            camera.camera.yfov = np.radians(lens_fov(fov))
            scene.set_pose(camera, pose)
            images[i], _ = self._renderer.render(scene, flags=pyrender.RenderFlags.FLAT)
            scene.remove_node(node)  # the renderer frees its GPU buffers on the next render
        return images

    def views(self, mesh: trimesh.Trimesh, cameras: np.ndarray) -> np.ndarray:
        """Grayscale R2N2-style views (see :func:`render_views`). Returns uint8 [V, size, size]."""
        gray = self.shaded(mesh, cameras, color=(_VIEW_GRAY,) * 3)
        return gray[..., 0].copy()  # a gray material renders R = G = B


def render_views(mesh: trimesh.Trimesh, cameras: np.ndarray, size: int = 137) -> np.ndarray:
    """Grayscale views like 3D-R2N2's renderings composited on white: the stored ``pixels``.

    Args:
        mesh: in normalised object space (bounding-box centre at the origin, diagonal 1).
        cameras: float [V, 5] R2N2 camera rows, e.g. from :func:`sample_r2n2_cameras` or an R2N2
            ``rendering_metadata.txt``.
        size: image width and height in pixels.

    Returns:
        uint8 [V, size, size]: a gray shaded object on a white (255) background.
    """
    with Renderer(size) as renderer:
        return renderer.views(mesh, cameras)


def render_rgb(
    mesh: trimesh.Trimesh,
    view: View = DEFAULT_VIEW,
    size: int = 256,
    *,
    light_direction: np.ndarray | None = None,
    color: tuple[float, float, float] = PREVIEW_COLOR,
) -> np.ndarray:
    """A shaded colour preview of ``mesh`` on white, for previews, reports and the web app.

    Args:
        mesh: in normalised object space.
        view: the camera.
        size: image width and height in pixels.
        light_direction: [3] direction from the object towards a distant light, in object space
            (e.g. :func:`direction_from`); None lights the object from above and to the left of the camera.
        color: RGB albedo in [0, 1].

    Returns:
        uint8 [size, size, 3].
    """
    with Renderer(size) as renderer:
        return renderer.shaded(mesh, view.camera()[None], color=color, light_direction=light_direction)[0]


def render_depth_normals(
    mesh: trimesh.Trimesh, view: View = DEFAULT_VIEW, size: int = 256, *, frame: str = "camera"
) -> tuple[np.ndarray, np.ndarray]:
    """Depth and normal maps of ``mesh`` seen by the same camera as :func:`render_rgb`.

    Ray cast through each pixel centre (trimesh; embree when installed), so the values are exact.

    Args:
        mesh: in normalised object space.
        view, size: the camera and image size, as in :func:`render_rgb`.
        frame: ``"camera"`` (x right, y up, z towards the viewer) or ``"object"`` for the normals.

    Returns:
        depth: float32 [size, size], distance from the camera along its viewing axis (z-depth, in
            object units); ``inf`` where no surface is hit.
        normals: float32 [size, size, 3], unit normal of the surface seen in each pixel, turned to
            face the camera (ShapeNet's face orientation is unreliable); 0 where no surface is hit.
    """
    if frame not in ("camera", "object"):
        raise ValueError(f"frame must be 'camera' or 'object', got {frame!r}")
    check_mesh(mesh, name="the mesh to render")
    pose = camera_pose(view.azimuth, view.elevation, view.distance_ratio)
    half_width = np.tan(np.radians(lens_fov(R2N2_RECORDED_FOV)) / 2)
    # Pixel centres in normalised device coordinates, row 0 at the top of the image.
    ndc = (np.arange(size) + 0.5) / size * 2.0 - 1.0
    x, y = np.meshgrid(ndc * half_width, -ndc * half_width)
    directions_camera = np.stack([x, y, -np.ones_like(x)], axis=-1).reshape(-1, 3)
    directions = directions_camera @ pose[:3, :3].T
    origins = np.broadcast_to(pose[:3, 3], directions.shape)

    locations, ray_index, triangle_index = mesh.ray.intersects_location(
        origins, directions, multiple_hits=False
    )
    depth = np.full(size * size, np.inf, dtype=np.float32)
    normals = np.zeros((size * size, 3), dtype=np.float32)
    forward = -pose[:3, 2]
    depth[ray_index] = (locations - pose[:3, 3]) @ forward
    hit_normals = np.asarray(mesh.face_normals)[triangle_index]
    facing_away = np.einsum("ij,ij->i", hit_normals, directions[ray_index]) > 0
    hit_normals[facing_away] *= -1
    if frame == "camera":
        hit_normals = hit_normals @ pose[:3, :3]
    normals[ray_index] = hit_normals
    return depth.reshape(size, size), normals.reshape(size, size, 3)


def depth_image(depth: np.ndarray) -> np.ndarray:
    """A depth map as a picture: float [H, W] (inf where empty) -> uint8 [H, W], the nearest surface
    0 (black), the farthest 200, empty 255 (white)."""
    hit = np.isfinite(depth)
    image = np.full(depth.shape, 255, dtype=np.uint8)
    if hit.any():
        near, far = depth[hit].min(), depth[hit].max()
        image[hit] = np.rint(200 * (depth[hit] - near) / max(far - near, 1e-6)).astype(np.uint8)
    return image


def normal_image(normals: np.ndarray) -> np.ndarray:
    """A normal map as a picture: unit normals float [H, W, 3] (0 where empty) -> uint8 RGB
    [H, W, 3] = (n + 1) / 2 * 255; empty pixels white."""
    image = np.rint((normals + 1.0) * 127.5).astype(np.uint8)
    image[~normals.any(axis=-1)] = 255
    return image

"""Tests for imnet.extract: dense and coarse-to-fine sampling of analytic and real fields, meshing.

The analytic fields are soft (a sigmoid of the signed distance) so that they look like a decoder's
output. Coarse-to-fine and certified sampling are compared with dense sampling exactly: for the shapes here
the occupancy, the values near the surface and the marching-cubes meshes must all be identical.
Certified sampling is exact for every field with sound bounds; coarse-to-fine can miss detached
parts, and a test shows it does.
"""

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates
from scipy.special import expit

from imnet.binvox import read_binvox
from imnet.checkpoint import load_model
from imnet.extract import certified_grid, coarse_to_fine_grid, dense_grid, extract_mesh, floor_points, grid_to_mesh

DATA = Path(__file__).parent / "data"
AIRPLANE_BINVOX = (
    DATA
    / "shapenet_v2_sample/02691156/4de653411d132abdf1e2558bb9cfc329/models/model_normalized.solid.binvox"
)

SHARPNESS = 300.0  # the sigmoid goes from 0.27 to 0.73 over 1/150: about a voxel at 128^3


def soft(sdf):
    """Occupancy field from a signed distance function (negative inside)."""
    return lambda points: expit(-SHARPNESS * sdf(points)).astype(np.float32)


def sphere_sdf(centre, radius):
    return lambda p: np.linalg.norm(p - np.asarray(centre), axis=1) - radius


def box_sdf(low, high):
    low, high = np.asarray(low), np.asarray(high)
    centre, half = (low + high) / 2, (high - low) / 2

    def sdf(p):
        q = np.abs(p - centre) - half
        return np.linalg.norm(np.maximum(q, 0), axis=1) + np.minimum(q.max(axis=1), 0)

    return sdf


def torus_sdf(major, minor):
    """Torus around the y axis."""
    return lambda p: np.hypot(np.hypot(p[:, 0], p[:, 2]) - major, p[:, 1]) - minor


def union(*sdfs):
    return lambda p: np.min([sdf(p) for sdf in sdfs], axis=0)


SHAPES = {
    "sphere": soft(sphere_sdf((0.03, -0.02, 0.01), 0.3)),
    "torus": soft(torus_sdf(0.28, 0.08)),
    "two blobs": soft(union(sphere_sdf((-0.25, 0.1, 0.0), 0.15), sphere_sdf((0.22, -0.2, 0.1), 0.12))),
}


def cell_centres(resolution):
    return (np.arange(resolution) + 0.5) / resolution - 0.5




def test_dense_grid_samples_cell_centres():
    values = dense_grid(lambda p: p[:, 0] + 10 * p[:, 1] + 100 * p[:, 2], 7, max_batch_points=50)
    c = cell_centres(7)
    expected = c[:, None, None] + 10 * c[None, :, None] + 100 * c[None, None, :]
    assert values.shape == (7, 7, 7) and values.dtype == np.float32
    np.testing.assert_allclose(values, expected, atol=1e-5)


@pytest.mark.parametrize(
    "shape, resolution",
    [("sphere", 33), ("sphere", 64), ("sphere", 100), ("sphere", 128), ("torus", 64), ("torus", 100),
     ("two blobs", 77), ("two blobs", 128)],
)
def test_coarse_to_fine_equals_dense(shape, resolution):
    field = SHAPES[shape]
    dense = dense_grid(field, resolution)
    values, stats = coarse_to_fine_grid(field, resolution)

    assert values.shape == dense.shape and values.dtype == np.float32
    np.testing.assert_array_equal(values > 0.5, dense > 0.5)
    # Marching cubes sees only evaluated values where the surface is, so the meshes are the same.
    surface = floor_points(dense > 0.5)
    np.testing.assert_array_equal(values[surface], dense[surface])
    mesh, reference = grid_to_mesh(values), grid_to_mesh(dense)
    np.testing.assert_array_equal(mesh.vertices, reference.vertices)
    np.testing.assert_array_equal(mesh.faces, reference.faces)
    assert stats.evaluations == sum(stats.evaluations_per_stage.values())


@pytest.mark.parametrize("resolution", [2, 3, 5, 7, 17])
@pytest.mark.parametrize("coarse_resolution", [2, 3, 4])
def test_any_resolution_and_coarse_spacing_equals_dense(resolution, coarse_resolution):
    field = soft(sphere_sdf((0.0, 0.0, 0.0), 0.45))
    values, _ = coarse_to_fine_grid(field, resolution, coarse_resolution=coarse_resolution)
    np.testing.assert_array_equal(values > 0.5, dense_grid(field, resolution) > 0.5)


def test_evaluations_far_below_dense_and_batched():
    calls = []

    def field(points):
        calls.append(len(points))
        return SHAPES["sphere"](points)

    _, stats = coarse_to_fine_grid(field, 128, max_batch_points=5000)
    assert stats.method == "coarse_to_fine" and stats.resolution == 128
    assert stats.reduction > 15  # about 24 for this sphere
    assert stats.evaluations == sum(calls) and stats.field_calls == len(calls)
    assert max(calls) <= 5000
    stages = stats.evaluations_per_stage
    assert list(stages) == ["coarse", "seeds", "surface", "repair"]
    assert stages["coarse"] == 32**3 and sum(stages.values()) == stats.evaluations


def test_tracking_evaluates_only_the_floor_beyond_coarse_lattice_and_seeds():
    """Past the coarse lattice and the bisection, every evaluation is a corner of a crossed cell."""
    for shape in SHAPES.values():
        values, stats = coarse_to_fine_grid(shape, 128)
        floor = int(floor_points(values > 0.5).sum())
        stages = stats.evaluations_per_stage
        assert stages["surface"] <= floor <= stats.evaluations
        assert stages["repair"] == 0


def test_fill_repairs_a_surface_the_seeds_passed_over():
    """A small ball on a coarse lattice point inside a thin hollow shell: the point's coarse
    neighbours all lie in the shell, so no coarse edge with disagreeing ends leads to the ball.
    Tracking walks the shell (its two faces share cells) but not the ball; the fill then sees the
    ball's evaluated centre disagree with the gap beyond the shell's inner face along z, evaluates
    the run between them, and follows the ball's surface from there."""
    centre = np.full(3, (31 + 0.5) / 64 - 0.5)  # padded index 32: on the stride-8 lattice

    def field(points):
        d = np.linalg.norm(points - centre, axis=1)
        return expit(-400 * np.minimum(d - 0.02, np.maximum(0.12 - d, d - 0.14))).astype(np.float32)

    values, stats = coarse_to_fine_grid(field, 64, coarse_resolution=8)
    assert stats.evaluations_per_stage["repair"] > 0
    np.testing.assert_array_equal(values > 0.5, dense_grid(field, 64) > 0.5)


def chair_with_thin_parts(resolution):
    """A thick seat carrying a plate and a rod 2 voxels thick, placed off every coarse lattice.

    Boxes are given in cell indices [low, high) so that cell centres lie half a voxel inside or
    outside their faces. Returns the field and its exact occupancy grid.
    """
    boxes = [
        ((40, 60, 40), (216, 100, 216)),  # seat
        ((60, 100, 153), (196, 230, 155)),  # backrest plate, z cells 153 and 154
        ((165, 10, 165), (167, 60, 167)),  # leg, x and z cells 165 and 166
    ]
    # Coarse lattices with stride s sample cells s - 1, 2s - 1, ...: none of 153, 154, 165, 166 for
    # s = 8, 16 or 32, so only tracking from the seat can find the plate and the leg.
    field = soft(union(*[box_sdf(np.divide(low, resolution) - 0.5, np.divide(high, resolution) - 0.5)
                         for low, high in boxes]))
    occupied = np.zeros((resolution,) * 3, dtype=bool)
    for low, high in boxes:
        occupied[low[0] : high[0], low[1] : high[1], low[2] : high[2]] = True
    return field, occupied


@pytest.mark.parametrize("coarse_resolution", [16, 8])  # coarse samples 16 and 32 voxels apart
def test_thin_parts_are_found_at_256(coarse_resolution):
    field, occupied = chair_with_thin_parts(256)
    values, stats = coarse_to_fine_grid(field, 256, coarse_resolution=coarse_resolution)
    np.testing.assert_array_equal(values > 0.5, occupied)
    assert stats.reduction > 40  # about 65


def test_gap_level_follows_dashes_of_a_thin_part():
    """A rod whose field dips to 0.4 in a gap: the dash beyond the gap is only found via gap_level."""
    body = soft(sphere_sdf((-0.25, 0.0, 0.0), 0.15))
    rod = soft(box_sdf((-0.12, 0.02, 0.02), (0.4, 0.05, 0.05)))  # y, z cells 33 and 34 at 64^3

    def field(points):
        in_gap = (points[:, 0] > 0.1) & (points[:, 0] < 0.15)
        return np.maximum(body(points), rod(points) * np.where(in_gap, 0.4, 1.0)).astype(np.float32)

    dense = dense_grid(field, 64) > 0.5
    followed, _ = coarse_to_fine_grid(field, 64, coarse_resolution=8, gap_level=0.25)
    surface_only, _ = coarse_to_fine_grid(field, 64, coarse_resolution=8)
    np.testing.assert_array_equal(followed > 0.5, dense)
    beyond_gap = cell_centres(64) > 0.15
    assert dense[beyond_gap].any() and not (surface_only > 0.5)[beyond_gap].any()


def test_real_shapenet_airplane_equals_dense():
    """A real shape: the ShapeNet airplane's solid voxels, trilinearly interpolated."""
    voxels, translate, scale = read_binvox(AIRPLANE_BINVOX)
    size = len(voxels)

    def field(points):
        index = (points - translate) / scale * size - 0.5
        return map_coordinates(voxels.astype(np.float32), index.T, order=1).astype(np.float32)

    dense = dense_grid(field, 128)
    values, stats = coarse_to_fine_grid(field, 128)
    np.testing.assert_array_equal(values > 0.5, dense > 0.5)
    assert stats.reduction > 25  # about 44


def test_sphere_mesh_is_closed_outward_and_on_the_surface():
    centre, radius, resolution = np.array([0.03, -0.02, 0.01]), 0.3, 64
    mesh, stats = extract_mesh(SHAPES["sphere"], resolution)
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * radius**3, rel=0.01)
    distance = np.linalg.norm(mesh.vertices - centre, axis=1) - radius
    assert np.abs(distance).max() < 0.5 / resolution
    outward = np.einsum("ij,ij->i", mesh.face_normals, mesh.triangles_center - centre)
    assert (outward > 0).all()
    assert stats.evaluations < resolution**3


@pytest.mark.parametrize("resolution", [64, 100])
def test_vertices_map_exactly_to_object_space(resolution):
    # Occupancy falling linearly across x = 0.1, so marching cubes' interpolation is exact.
    grid = dense_grid(lambda p: np.clip(0.5 + 8 * (0.1 - p[:, 0]), 0, 1), resolution)
    mesh = grid_to_mesh(grid)
    v = mesh.vertices
    plane = (v[:, 0] > -0.45) & (np.abs(v[:, 1:]) < 0.45).all(axis=1)
    assert plane.sum() > 100
    np.testing.assert_allclose(v[plane, 0], 0.1, atol=1e-5)
    # Elsewhere the padding closes the mesh on the faces of the cube.
    np.testing.assert_allclose(mesh.bounds, [[-0.5, -0.5, -0.5], [0.1, 0.5, 0.5]], atol=1e-5)
    assert mesh.volume > 0

    box = np.array([[0.0, 1.0, -3.0], [2.0, 5.0, 3.0]])
    moved = grid_to_mesh(grid, bounds=box)
    np.testing.assert_allclose(moved.vertices, box[0] + (v + 0.5) * (box[1] - box[0]), atol=1e-12)


def test_full_grid_is_the_closed_unit_cube():
    mesh = grid_to_mesh(np.ones((32, 32, 32), dtype=np.float32))
    assert mesh.is_watertight
    np.testing.assert_allclose(mesh.bounds, [[-0.5] * 3, [0.5] * 3], atol=1e-6)
    assert 0.99 < mesh.volume <= 1.0  # marching cubes bevels the cube's edges by half a cell


@pytest.mark.parametrize("method", ["coarse_to_fine", "dense"])
def test_empty_field_gives_empty_mesh_and_a_warning(method):
    with pytest.warns(UserWarning, match="mesh is empty"):
        mesh, stats = extract_mesh(lambda p: np.zeros(len(p), np.float32), 64, method=method)
    assert mesh.is_empty and len(mesh.vertices) == 0 and len(mesh.faces) == 0
    assert stats.evaluations == (32**3 if method == "coarse_to_fine" else 64**3)
    assert grid_to_mesh(np.zeros((8, 8, 8))).is_empty


def test_field_output_of_shape_n_by_1_is_accepted():
    field = SHAPES["sphere"]
    values, _ = coarse_to_fine_grid(lambda p: field(p)[:, None], 32)
    np.testing.assert_array_equal(values, coarse_to_fine_grid(field, 32)[0])


@pytest.mark.parametrize(
    "field, message",
    [
        (lambda p: np.zeros((len(p), 2)), r"shape \(\d+, 2\)"),
        (lambda p: np.float32(0.5), r"shape \(\)"),
        (lambda p: np.full(len(p), np.nan), "non-finite"),
    ],
)
def test_bad_field_output_is_a_clear_error(field, message):
    for method in ("coarse_to_fine", "dense"):
        with pytest.raises(ValueError, match=message):
            extract_mesh(field, 16, method=method)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"resolution": 1}, "resolution must be an integer >= 2"),
        ({"resolution": 32.5}, "resolution must be an integer >= 2"),
        ({"level": 1.0}, "level must be strictly between 0 and 1"),
        ({"gap_level": 0.5}, "gap_level must be None or in"),
        ({"coarse_resolution": 0}, "coarse_resolution must be a positive integer"),
        ({"max_batch_points": 0}, "max_batch_points must be at least 1"),
        ({"method": "fast"}, "method must be"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        extract_mesh(SHAPES["sphere"], **{"resolution": 16, **kwargs})


def test_bad_grids_are_clear_errors():
    with pytest.raises(TypeError, match="field must be a callable"):
        dense_grid(np.zeros(3), 8)
    with pytest.raises(ValueError, match="3D grid"):
        grid_to_mesh(np.zeros((8, 8)))
    with pytest.raises(ValueError, match="bounds must be"):
        grid_to_mesh(np.ones((4, 4, 4)), bounds=[[0, 0, 0], [1, -1, 1]])


# ---------------------------------------------------------------------------------------------
# Certified extraction (fields with bounds)


class BoxUnionField:
    """Union of axis-aligned boxes, occupancy sigmoid(-SHARPNESS * signed distance), with sound
    bounds over boxes: the signed distance is 1-Lipschitz, so over a box it stays within
    half the box's diagonal of its value at the centre."""

    bound_cost = 1.0

    def __init__(self, boxes):
        boxes = np.asarray(boxes, dtype=np.float64)
        self.centre, self.half = boxes.mean(axis=1), (boxes[:, 1] - boxes[:, 0]) / 2
        self.calls = 0

    def sdf(self, points):
        q = np.abs(np.asarray(points, dtype=np.float64)[:, None, :] - self.centre) - self.half
        return (np.linalg.norm(np.maximum(q, 0), axis=2) + np.minimum(q.max(axis=2), 0)).min(axis=1)

    def __call__(self, points):
        self.calls += 1
        return expit(-SHARPNESS * self.sdf(points)).astype(np.float32)

    def bounds(self, low, high):
        distance = self.sdf((low + high) / 2)
        reach = np.linalg.norm(high - low, axis=1) / 2 + 1e-9  # + a margin for float64 rounding
        # float32 rounding is monotone, so the bounds hold for the float32 values the field returns.
        return (expit(-SHARPNESS * (distance + reach)).astype(np.float32),
                expit(-SHARPNESS * (distance - reach)).astype(np.float32))


def detached_thin_parts(resolution):
    """A body with detached thin parts, in cell indices [low, high): a plate one cell thick at an
    even x cell (the coarse lattice of coarse-to-fine at 96^3 samples only odd cells), and a
    2-cell cube. Neither touches the body, so no surface can be followed into them."""
    cells = [
        ((20, 20, 20), (50, 50, 50)),  # body
        ((70, 20, 20), (71, 70, 70)),  # plate, x cell 70 only
        ((60, 80, 60), (62, 82, 62)),  # small cube
    ]
    return BoxUnionField([[np.divide(lo, resolution) - 0.5, np.divide(hi, resolution) - 0.5] for lo, hi in cells])


def assert_same_as_dense(values, dense, level=0.5, rtol=0.0):
    """Same occupancy, same values where the surface is, same mesh. ``rtol``: a decoder's float32
    result may differ in its last bit with the batch a point is evaluated in."""
    np.testing.assert_array_equal(values > level, dense > level)
    surface = floor_points(dense > level)
    np.testing.assert_allclose(values[surface], dense[surface], rtol=rtol, atol=0)
    mesh, reference = grid_to_mesh(values, level=level), grid_to_mesh(dense, level=level)
    np.testing.assert_allclose(mesh.vertices, reference.vertices, rtol=0, atol=1e-6 if rtol else 0)
    np.testing.assert_array_equal(mesh.faces, reference.faces)


def test_certified_finds_detached_thin_parts_that_coarse_to_fine_misses():
    field = detached_thin_parts(96)
    dense = dense_grid(field, 96)
    missed, _ = coarse_to_fine_grid(field, 96)
    plate = dense[70] > 0.5
    assert plate.any() and not (missed[70] > 0.5).any()  # the old sampler loses the plate
    values, stats = certified_grid(field, 96)
    assert_same_as_dense(values, dense)
    assert stats.method == "certified" and stats.bound_evaluations > 0 and stats.bound_cost == 1.0
    assert stats.evaluation_units == stats.evaluations + stats.bound_evaluations
    assert stats.certified_points == 96**3 - stats.evaluations
    assert stats.evaluations == sum(stats.evaluations_per_stage.values())
    assert stats.reduction > 10  # about 25


@pytest.mark.parametrize("resolution, leaf_size", [(2, None), (5, 2), (17, 4), (33, 8), (47, None)])
def test_certified_equals_dense_at_any_resolution(resolution, leaf_size):
    field = BoxUnionField([[[-0.3, -0.2, -0.25], [0.1, 0.3, 0.2]], [[0.2, -0.4, 0.1], [0.26, 0.45, 0.16]]])
    values, _ = certified_grid(field, resolution, leaf_size=leaf_size)
    assert_same_as_dense(values, dense_grid(field, resolution))


def test_certified_touching_the_border_and_other_levels():
    """Inside up to the grid's border: the padding makes the border points surface points."""
    field = BoxUnionField([[[-0.6, -0.6, -0.6], [0.1, 0.6, 0.0]]])
    for level in (0.2, 0.5, 0.9):
        values, _ = certified_grid(field, 40, level=level)
        assert_same_as_dense(values, dense_grid(field, 40), level=level)


@pytest.mark.parametrize("resolution", [64, 100])
def test_certified_equals_dense_on_a_trained_decoder(tiny_checkpoint, resolution):
    from imnet.inference import BoundedDecoderField, decoder_field

    model, _ = load_model(tiny_checkpoint)
    field = decoder_field(model.decoder, torch.zeros(model.config.code_dim), precision="fp32")
    assert isinstance(field, BoundedDecoderField)
    dense = dense_grid(field, resolution)
    values, stats = certified_grid(field, resolution)
    assert_same_as_dense(values, dense, rtol=1e-6)
    assert stats.bound_cost == 5.0 and stats.reduction > 2.5
    mesh, stats = extract_mesh(field, resolution, method="certified")
    assert stats.method == "certified"
    np.testing.assert_allclose(mesh.vertices, grid_to_mesh(dense).vertices, rtol=0, atol=1e-6)


def test_certified_needs_bounds_and_huge_grids_are_refused():
    with pytest.raises(TypeError, match="needs a field with a bounds"):
        certified_grid(SHAPES["sphere"], 16)
    _, stats = extract_mesh(SHAPES["sphere"], 16)  # "auto" is coarse-to-fine
    assert stats.method == "coarse_to_fine"
    for method in ("certified", "coarse_to_fine", "dense"):
        with pytest.raises(ValueError, match="resolution 100000 is above the limit of 1024"):
            extract_mesh(BoxUnionField([[[-0.1] * 3, [0.1] * 3]]), 100000, method=method)
    with pytest.raises(ValueError, match="leaf_size must be a power of two"):
        certified_grid(BoxUnionField([[[-0.1] * 3, [0.1] * 3]]), 16, leaf_size=6)


def test_bf16_field_runs_and_refines_near_the_level_in_fp32():
    """Forced bf16 (slow on CPUs without bf16 units, so a tiny decoder): values near the level are
    float32's, the rest within bf16's rounding of them."""
    from imnet.inference import BF16_REFINE_MARGIN, decoder_field
    from imnet.model import Decoder

    torch.manual_seed(0)
    decoder = Decoder(code_dim=8, widths=(32, 16)).eval()
    code = torch.rand(8)
    points = np.random.default_rng(0).uniform(-0.5, 0.5, (4000, 3)).astype(np.float32)
    fp32 = decoder_field(decoder, code, precision="fp32")(points)
    level = float(np.median(fp32))  # a level the field crosses, with many points near it
    bf16_field = decoder_field(decoder, code, precision="bf16", level=level)
    bf16 = bf16_field(points)
    near = np.abs(bf16 - level) < BF16_REFINE_MARGIN
    assert bf16_field.precision == "bf16" and bf16_field.refined == near.sum() > 0
    np.testing.assert_array_equal(bf16[near], fp32[near])
    assert np.abs(bf16 - fp32).max() < 0.02
    np.testing.assert_array_equal(bf16 > level, fp32 > level)


def test_floor_points_are_the_corners_of_crossed_cells():
    one = np.zeros((5, 5, 5), bool)
    one[2, 2, 2] = True  # a single inside point: the 27 points around it share a crossed cell with it
    expected = np.zeros_like(one)
    expected[1:4, 1:4, 1:4] = True
    np.testing.assert_array_equal(floor_points(one), expected)
    full = np.ones((4, 4, 4), bool)  # the padding outside makes the whole border a surface
    assert floor_points(full).sum() == 4**3 - 2**3
    assert not floor_points(np.zeros((4, 4, 4), bool)).any()

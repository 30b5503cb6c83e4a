"""Tests for imnet.sampling (IM-NET point sampling from 256^3 solids). Budget: under 10 s."""

from pathlib import Path

import h5py
import numpy as np
import pytest

from imnet.sampling import POINT_COUNTS, downsample_voxels, indices_to_coords, sample_points

DATA = Path(__file__).parent / "data"
LEVELS = (16, 32, 64)


def ball(radius: float, centre=(127.5, 127.5, 127.5)) -> np.ndarray:
    """Solid ball in a 256^3 grid; voxel (i, j, k) is inside when its centre index is within radius."""
    axes = [np.arange(256) - c for c in centre]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    return x**2 + y**2 + z**2 < radius**2


@pytest.fixture(scope="module")
def real_chair() -> np.ndarray:
    """A real chair: the 2018 fixture's first 64^3 solid, upsampled to 256^3."""
    with h5py.File(DATA / "imnet_original_sample" / "samplechair_vox.hdf5", "r") as f:
        voxels = f["voxels"][0, ..., 0].astype(bool)
    return voxels.repeat(4, 0).repeat(4, 1).repeat(4, 2)


def check_counts_and_values(samples: dict, solid: np.ndarray) -> None:
    for level in LEVELS:
        points, values = samples[f"points_{level}"], samples[f"values_{level}"]
        assert points.shape == (POINT_COUNTS[level], 3) and points.dtype == np.uint8
        assert values.shape == (POINT_COUNTS[level], 1) and values.dtype == np.uint8
        np.testing.assert_array_equal(values[:, 0], solid[tuple(points.T)])
        # At most one point per cell of the level's grid, so points never repeat.
        cells = points.astype(int) // (256 // level)
        assert len(np.unique(cells, axis=0)) == len(points)


def test_indices_to_coords():
    coords = indices_to_coords(np.array([[0, 128, 255]], np.uint8))
    assert coords.dtype == np.float32
    np.testing.assert_allclose(coords, [[0.5 / 256 - 0.5, 0.5 / 256, 0.5 - 0.5 / 256]])
    np.testing.assert_allclose(indices_to_coords(np.array([0, 15]), grid=16), [-15 / 32, 15 / 32])


def test_downsample_voxels_is_max_pooling(real_chair):
    small = downsample_voxels(real_chair, size=64)
    assert small.shape == (64, 64, 64) and small.dtype == bool
    np.testing.assert_array_equal(small, real_chair.reshape(64, 4, 64, 4, 64, 4).any(axis=(1, 3, 5)))
    one = np.zeros((256, 256, 256), bool)
    one[5, 200, 77] = True
    assert np.argwhere(downsample_voxels(one, size=32)).tolist() == [[0, 25, 9]]
    with pytest.raises(ValueError, match="multiple of 64"):
        downsample_voxels(np.zeros((100, 100, 100), bool))


def test_real_chair_counts_dtypes_and_values(real_chair):
    samples = sample_points(real_chair, np.random.default_rng(0))
    assert set(samples) == {f"{kind}_{level}" for kind in ("points", "values") for level in LEVELS}
    check_counts_and_values(samples, real_chair)
    # Near-surface levels see far more of the inside than uniform sampling would.
    assert samples["values_64"].mean() > 2 * real_chair.mean()


def test_level_16_one_point_per_block_inside_preferred(real_chair):
    points = sample_points(real_chair, np.random.default_rng(1))["points_16"].astype(int)
    blocks = points // 16
    assert len(np.unique(blocks, axis=0)) == 4096
    block_has_inside = downsample_voxels(real_chair, size=16)[tuple(blocks.T)]
    np.testing.assert_array_equal(real_chair[tuple(points.T)], block_has_inside)


def test_single_voxel_is_found_at_every_level():
    solid = np.zeros((256, 256, 256), bool)
    solid[100, 101, 102] = True
    samples = sample_points(solid, np.random.default_rng(2))
    check_counts_and_values(samples, solid)
    for level in LEVELS:
        points = samples[f"points_{level}"]
        inside = points[samples[f"values_{level}"][:, 0] == 1]
        assert inside.tolist() == [[100, 101, 102]]
        if level > 16:
            # The 27 cells around the occupied one are near the surface, so all are sampled.
            side = 256 // level
            centre = np.array([100, 101, 102]) // side
            cells = {tuple(c) for c in points.astype(int) // side}
            neighbours = {tuple(centre + np.array(d) - 1) for d in np.ndindex(3, 3, 3)}
            assert neighbours <= cells


def test_near_surface_points_are_near_the_surface():
    radius = 110.0  # large enough that the near-surface cells exceed both caps
    solid = ball(radius)
    samples = sample_points(solid, np.random.default_rng(3))
    check_counts_and_values(samples, solid)
    for level in (32, 64):
        side = 256 // level
        offset = np.linalg.norm(samples[f"points_{level}"] - 127.5, axis=1) - radius
        # A near-surface cell touches a cell of the other value: the surface is within two cells.
        assert np.abs(offset).max() <= 2 * side * np.sqrt(3)


def test_fill_points_top_up_a_small_surface():
    solid = ball(30.0)  # few near-surface cells: most points are random fill
    samples = sample_points(solid, np.random.default_rng(4))
    check_counts_and_values(samples, solid)
    distance = np.abs(np.linalg.norm(samples["points_64"] - 127.5, axis=1) - 30.0)
    assert 0.05 < (distance > 30).mean() < 0.95


def test_deterministic_for_a_seed(real_chair):
    first = sample_points(real_chair, np.random.default_rng(5))
    again = sample_points(real_chair, np.random.default_rng(5))
    other = sample_points(real_chair, np.random.default_rng(6))
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["points_64"], other["points_64"])


@pytest.mark.parametrize("fill", [False, True])
def test_empty_and_full_grids(fill):
    solid = np.full((256, 256, 256), fill)
    samples = sample_points(solid, np.random.default_rng(7))
    check_counts_and_values(samples, solid)
    for level in LEVELS:
        assert (samples[f"values_{level}"] == fill).all()


def test_accepts_uint8_and_rejects_wrong_shape(real_chair):
    as_bool = sample_points(real_chair, np.random.default_rng(8))
    as_uint8 = sample_points(real_chair.astype(np.uint8), np.random.default_rng(8))
    np.testing.assert_array_equal(as_bool["points_32"], as_uint8["points_32"])
    with pytest.raises(ValueError, match=r"\[256, 256, 256\].*\(128, 128, 128\)"):
        sample_points(np.zeros((128, 128, 128), bool), np.random.default_rng(0))

import itertools
from pathlib import Path

import h5py
import numpy as np
import pytest
import trimesh
from scipy import ndimage

from imnet.binvox import binvox_bounds, read_binvox, write_binvox

DATA = Path(__file__).parent / "data"
SHAPENET = sorted((DATA / "shapenet_v2_sample").glob("*/*/models"))
VOX32 = DATA / "r2n2_sample/ShapeNetVox32/03001627/1a6f615e8b1b5ae4dbbc9440457e303e/model.binvox"
IMNET = DATA / "imnet_original_sample"
ALL_FILES = sorted(DATA.rglob("*.binvox"))


def _payload(path):
    data = Path(path).read_bytes()
    return data[data.index(b"\ndata\n") + len(b"\ndata\n") :]


def test_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    voxels = rng.random((40, 40, 40)) < 0.3
    voxels[:20] = True  # runs far longer than one count byte (255)
    voxels[-5:] = False
    translate, scale = np.array([-0.123456789, 0.25, 3.5]), 0.987654321
    write_binvox(tmp_path / "a.binvox", voxels, translate, scale)

    back, back_translate, back_scale = read_binvox(tmp_path / "a.binvox")
    assert back.dtype == bool and back.shape == (40, 40, 40)
    np.testing.assert_array_equal(back, voxels)
    np.testing.assert_array_equal(back_translate, translate)
    assert back_scale == scale


def test_written_data_is_in_binvox_xzy_order(tmp_path):
    voxels = np.zeros((4, 4, 4), dtype=bool)
    voxels[1, 2, 3] = True  # x=1, y=2, z=3
    write_binvox(tmp_path / "one.binvox", voxels)
    runs = np.frombuffer(_payload(tmp_path / "one.binvox"), dtype=np.uint8)
    flat = np.repeat(runs[0::2], runs[1::2])
    # Stored x slowest, then z, then y fastest.
    assert np.flatnonzero(flat).tolist() == [1 * 16 + 3 * 4 + 2]


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(DATA)))
def test_rewriting_official_files_reproduces_their_data(path, tmp_path):
    voxels, translate, scale = read_binvox(path)
    write_binvox(tmp_path / "copy.binvox", voxels, translate, scale)
    assert _payload(tmp_path / "copy.binvox") == _payload(path)


def _surface_hit_rates(model_dir, kind):
    """Fraction of mesh surface samples whose voxel (or a neighbour) is occupied, per axis permutation."""
    mesh = trimesh.load(model_dir / "model_normalized.obj", force="mesh")
    points, _ = trimesh.sample.sample_surface(mesh, 5000, seed=0)
    voxels, translate, scale = read_binvox(model_dir / f"model_normalized.{kind}.binvox")
    size = voxels.shape[0]
    index = np.clip(np.floor((points - translate) / scale * size).astype(int), 0, size - 1)
    near = ndimage.binary_dilation(voxels, np.ones((3, 3, 3), bool))
    return {perm: near.transpose(perm)[tuple(index.T)].mean() for perm in itertools.permutations(range(3))}


# The official voxels of chair 353bbd... lack most of its seat and back: they are zero-thickness
# sheets made of coincident back-to-back faces, which binvox dropped (its solid file equals its
# surface file). Only about half of that mesh's surface is therefore in its binvox.
MIN_HIT_RATE = {"4de653411d132abdf1e2558bb9cfc329": 0.99, "341c9b0583d31770492d9da2668ec34c": 0.99,
                "353bbd3b916426d24502f857a1cf320e": 0.5}


@pytest.mark.parametrize("kind", ["solid", "surface"])
@pytest.mark.parametrize("model_dir", SHAPENET, ids=lambda p: p.parent.name[:8])
def test_shapenet_binvox_agrees_with_its_mesh(model_dir, kind):
    rates = _surface_hit_rates(model_dir, kind)
    right = rates.pop((0, 1, 2))
    assert right >= MIN_HIT_RATE[model_dir.parent.name]
    # Every wrong axis order, including binvox's raw storage order (0, 2, 1), agrees far less.
    assert max(rates.values()) < right / 2, rates


@pytest.mark.parametrize("model_dir", SHAPENET, ids=lambda p: p.parent.name[:8])
def test_shapenet_binvox_header_is_the_mesh_bounding_box(model_dir):
    mesh = trimesh.load(model_dir / "model_normalized.obj", force="mesh")
    voxels, translate, scale = read_binvox(model_dir / "model_normalized.solid.binvox")
    assert voxels.shape == (128, 128, 128)
    np.testing.assert_allclose(translate, mesh.bounds[0], atol=1e-5)
    assert scale == pytest.approx(mesh.extents.max(), abs=1e-5)
    np.testing.assert_allclose(binvox_bounds(translate, scale), [translate, translate + scale])


def test_shapenetvox32_reads_with_y_up():
    voxels, translate, scale = read_binvox(VOX32)
    assert voxels.shape == (32, 32, 32) and voxels.dtype == bool
    np.testing.assert_allclose(translate, [-0.227311, -0.368659, -0.24984])
    assert scale == pytest.approx(0.737318)
    # A chair is tallest along y (up), which binvox stretches over the whole grid.
    occupied = np.argwhere(voxels)
    extent = occupied.max(axis=0) - occupied.min(axis=0) + 1
    assert extent[1] == 32 and max(extent[0], extent[2]) < 32


def test_imnet_binvox_is_the_surface_of_imnet_hdf5_voxels():
    with h5py.File(IMNET / "samplechair_vox.hdf5", "r") as f:
        hdf5_voxels = f["voxels"][:, :, :, :, 0].astype(bool)
    for i in range(3):
        voxels, translate, scale = read_binvox(IMNET / f"{i + 1}.binvox")
        assert voxels.shape == (64, 64, 64)
        np.testing.assert_array_equal(translate, [-0.5, -0.5, -0.5])
        assert scale == 1.0
        # The 2018 release's binvox files are hollow shells; filled, they are its HDF5 voxels,
        # which are thus indexed [x, y, z] as well.
        np.testing.assert_array_equal(ndimage.binary_fill_holes(voxels), hdf5_voxels[i])


def test_non_cubic_grid_is_rejected(tmp_path):
    path = tmp_path / "box.binvox"
    path.write_bytes(b"#binvox 1\ndim 4 4 2\ntranslate 0 0 0\nscale 1\ndata\n" + bytes([0, 32]))
    with pytest.raises(ValueError, match="4x4x2.*only cubic"):
        read_binvox(path)


def test_truncated_file_is_rejected(tmp_path):
    data = VOX32.read_bytes()
    path = tmp_path / "cut.binvox"
    path.write_bytes(data[: len(data) - 100])
    with pytest.raises(ValueError, match="truncated"):
        read_binvox(path)
    path.write_bytes(data[: data.index(b"data")])
    with pytest.raises(ValueError, match="no 'data' line"):
        read_binvox(path)


def test_other_files_are_rejected(tmp_path):
    path = tmp_path / "mesh.binvox"
    path.write_bytes(b"v 0 0 0\nv 1 0 0\n")
    with pytest.raises(ValueError, match="not a binvox file"):
        read_binvox(path)
    path.write_bytes(b"#binvox 1\ndim 4 4 4\ndata\n")
    with pytest.raises(ValueError, match="lacks translate, scale"):
        read_binvox(path)


def test_write_rejects_non_cubic_voxels(tmp_path):
    with pytest.raises(ValueError, match="cubic"):
        write_binvox(tmp_path / "x.binvox", np.zeros((4, 4, 3), bool))

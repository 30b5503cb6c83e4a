"""Tests for imnet.datafile (IM-NET-layout HDF5 files). Budget: under 30 s."""

from pathlib import Path

import h5py
import numpy as np
import pytest

from imnet.datafile import (
    assemble,
    open_datafile,
    read_shape_record,
    write_datafile,
    write_shape_record,
)
from imnet.sampling import downsample_voxels, indices_to_coords, sample_points

DATA = Path(__file__).parent / "data"
SAMPLE_2018 = DATA / "imnet_original_sample" / "samplechair_vox.hdf5"
LEVELS = (16, 32, 64)
POINT_KEYS = [f"{kind}_{level}" for level in LEVELS for kind in ("points", "values")]


def make_record(seed: int, *, pixels: bool = True) -> dict:
    """A full per-shape record: a random box, its samples, views and meta."""
    rng = np.random.default_rng(seed)
    lo = rng.integers(40, 100, size=3)
    hi = rng.integers(150, 220, size=3)
    solid = np.zeros((256, 256, 256), bool)
    solid[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    record = sample_points(solid, rng)
    record["voxels"] = downsample_voxels(solid)
    if pixels:
        record["pixels"] = rng.integers(0, 256, size=(24, 137, 137), dtype=np.uint8)
        record["cameras"] = rng.uniform(0, 360, size=(24, 5)).astype(np.float32)
    record["centre"] = rng.normal(size=3).astype(np.float32)
    record["scale"] = np.float32(rng.uniform(0.5, 2.0))
    record["source"] = f"shapenet-v2:/data/ShapeNetCore.v2/03001627/id{seed}/models/model_normalized.obj"
    record["name"] = f"03001627/id{seed}"
    return record


@pytest.fixture(scope="module")
def records() -> list[dict]:
    return [make_record(seed) for seed in range(3)]


def assert_matches(data, records: list[dict]) -> None:
    assert data.layout == "imnet-v1" and len(data) == len(records)
    assert data.names == [r["name"] for r in records]
    for i, record in enumerate(records):
        np.testing.assert_array_equal(data.voxels[i], record["voxels"])
        np.testing.assert_array_equal(data.pixels[i], record["pixels"])
        for level in LEVELS:
            np.testing.assert_array_equal(data.point_indices(level, i), record[f"points_{level}"])
            np.testing.assert_array_equal(data.values(level, i), record[f"values_{level}"][:, 0])
        np.testing.assert_array_equal(data.meta["centre"][i], record["centre"])
        np.testing.assert_array_equal(data.meta["scale"][i], record["scale"])
        np.testing.assert_array_equal(data.meta["cameras"][i], record["cameras"])
        assert data.meta["source"][i] == record["source"]


def test_round_trip_all_keys_and_meta(tmp_path, records):
    path = write_datafile(tmp_path / "chairs_train.hdf5", records, [r["name"] for r in records])
    with open_datafile(path) as data:
        assert_matches(data, records)
        assert data.point_counts == {16: 4096, 32: 4096, 64: 16384}
        points = data.points(64, 1)
        assert points.dtype == np.float32 and points.shape == (16384, 3)
        np.testing.assert_array_equal(points, indices_to_coords(records[1]["points_64"]))
        assert data.values(32).shape == (3, 4096) and data.values(32).dtype == np.float32
        # voxels and pixels read lazily, indexed like arrays: rows in any order, repeated, negative.
        assert data.voxels.shape == (3, 64, 64, 64) and np.asarray(data.voxels).shape == (3, 64, 64, 64)
        np.testing.assert_array_equal(data.voxels[[2, 0, 2]], np.asarray(data.voxels)[[2, 0, 2]])
        np.testing.assert_array_equal(data.pixels[-1, 5, 4:132], records[-1]["pixels"][5, 4:132])
        np.testing.assert_array_equal(data.pixels[..., 0], np.stack([r["pixels"][..., 0] for r in records]))
        np.testing.assert_array_equal(data.values(16, [1, 0]), data.values(16)[[1, 0]])

    # The published layout underneath, plus our attributes and names file.
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "imnet" and f.attrs["format_version"] == 1
        assert f.attrs["point_grid"] == 256
        shapes = {key: f[key].shape for key in f if key != "meta"}
        assert shapes == {
            "pixels": (3, 24, 137, 137), "voxels": (3, 64, 64, 64, 1),
            "points_16": (3, 4096, 3), "values_16": (3, 4096, 1),
            "points_32": (3, 4096, 3), "values_32": (3, 4096, 1),
            "points_64": (3, 16384, 3), "values_64": (3, 16384, 1),
        }
        for key in shapes:
            assert f[key].dtype == np.uint8 and f[key].compression == "gzip"
            assert f[key].chunks == (1, *shapes[key][1:])
        assert f["meta/cameras"].dtype == np.float32 and f["meta/cameras"].shape == (3, 24, 5)
    names_file = tmp_path / "chairs_train.txt"
    assert names_file.read_text() == "".join(f"{r['name']}\n" for r in records)


def test_stacked_arrays_and_voxels_only(tmp_path, records):
    keys = ["voxels", *POINT_KEYS]
    stacked = {key: np.stack([r[key] for r in records]) for key in keys}
    path = write_datafile(tmp_path / "v.hdf5", stacked, ["a/1", "a/2", "a/3"])
    with open_datafile(path) as data:
        assert data.pixels is None
        np.testing.assert_array_equal(data.point_indices(16), stacked["points_16"])
        # Meta that was not given reads as unknown.
        assert np.isnan(data.meta["centre"]).all() and data.meta["source"] == ["", "", ""]


def test_shape_records_and_assemble(tmp_path, records):
    paths = [write_shape_record(tmp_path / f"shape{i}.npz", r) for i, r in enumerate(records)]
    loaded = read_shape_record(paths[1])
    assert loaded["name"] == records[1]["name"] and isinstance(loaded["source"], str)
    np.testing.assert_array_equal(loaded["points_64"], records[1]["points_64"])

    out = assemble(paths, tmp_path / "all.hdf5")
    with open_datafile(out) as data:
        assert_matches(data, records)
        data.load_into_memory(["voxels", "points_64", "values_64"])
    # Loaded data outlive the file, as plain arrays; the rest needs it open.
    assert isinstance(data.voxels, np.ndarray)
    np.testing.assert_array_equal(data.voxels[0], records[0]["voxels"])
    with pytest.raises(RuntimeError, match="closed.*load_into_memory"):
        data.values(16)


def test_write_is_atomic(tmp_path, records):
    path = tmp_path / "train.hdf5"
    write_datafile(path, records[:1], [records[0]["name"]])
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    broken = dict(records[2], points_64=records[2]["points_64"][:100])
    with pytest.raises(ValueError, match=r"shape 2: 'points_64' has shape \(100, 3\)"):
        write_datafile(path, [records[0], records[1], broken], ["a/1", "a/2", "a/3"])
    # The earlier file and its names are untouched and no temporary file is left behind.
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    fresh = tmp_path / "fresh.hdf5"
    with pytest.raises(ValueError, match="shape 1 lacks pixels"):
        write_datafile(fresh, [records[0], make_record(9, pixels=False)], ["a/1", "a/2"])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)


def test_record_errors(tmp_path, records):
    with pytest.raises(ValueError, match="lacks values_32"):
        write_shape_record(tmp_path / "x.npz", {k: v for k, v in records[0].items() if k != "values_32"})
    with pytest.raises(ValueError, match="'values_16' holds values outside 0..1"):
        write_shape_record(tmp_path / "x.npz", dict(records[0], values_16=records[0]["values_16"] * 2))
    with pytest.raises(ValueError, match="2 shapes but 3 names"):
        write_datafile(tmp_path / "y.hdf5", records[:2], ["a/1", "a/2", "a/3"])
    assert list(tmp_path.iterdir()) == []


def test_reads_the_2018_layout_consistently_with_its_voxels():
    with open_datafile(SAMPLE_2018) as data:
        assert data.layout == "imnet-2018"
        assert data.names == ["1", "2", "3"]
        assert data.meta is None and data.pixels is None
        assert data.point_counts == {16: 4096, 32: 8192, 64: 32768}
        voxels = np.asarray(data.voxels).astype(bool)
        for level in LEVELS:
            assert data.point_grid(level) == level
            points, values = data.points(level), data.values(level)
            assert points.dtype == np.float32 and (np.abs(points) < 0.5).all()
            # Each point is the centre of a level^3 cell, whose value is the 64^3 voxels
            # max-pooled to that grid: point columns are the voxel axes in order.
            cells = np.floor((points + 0.5) * level).astype(int)
            np.testing.assert_allclose(points, (cells + 0.5) / level - 0.5)
            for i in range(len(data)):
                pooled = downsample_voxels(voxels[i], size=level)
                np.testing.assert_array_equal(values[i], pooled[tuple(cells[i].T)])


def test_reads_a_published_layout_file(tmp_path, records):
    path = tmp_path / "all_vox256_img_test.hdf5"
    with h5py.File(path, "w") as f:
        for key in ["pixels", "voxels", *POINT_KEYS]:
            value = np.stack([r[key] for r in records[:2]]).astype(np.uint8)
            if key == "voxels":
                value = value[..., None]
            f.create_dataset(key, data=value, compression="gzip", compression_opts=9)
    (tmp_path / "all_vox256_img_test.txt").write_text("02691156/aaa\n02691156/bbb\n")
    with open_datafile(path) as data:
        assert data.layout == "imnet-published" and data.meta is None
        assert data.names == ["02691156/aaa", "02691156/bbb"]
        assert data.point_grid(64) == 256
        stored = np.stack([r["points_64"] for r in records[:2]]).astype(np.float32)
        np.testing.assert_array_equal(data.points(64), (stored + 0.5) / 256 - 0.5)
        # The sampler's points agree with the stored 64^3 voxels: inside points lie in inside cells.
        cells = data.point_indices(64, 0).astype(int) // 4
        inside = data.values(64, 0) == 1
        assert data.voxels[0][tuple(cells[inside].T)].all()

    (tmp_path / "all_vox256_img_test.txt").write_text("02691156/aaa\n")
    with pytest.raises(ValueError, match="lists 1 names but .* holds 2 shapes"):
        open_datafile(path)


def test_clear_errors_for_wrong_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such data file"):
        open_datafile(tmp_path / "missing.hdf5")

    text = tmp_path / "notes.hdf5"
    text.write_text("not hdf5")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        open_datafile(text)

    other = tmp_path / "other.hdf5"
    with h5py.File(other, "w") as f:
        f.create_dataset("voxels", data=np.zeros((1, 64, 64, 64, 1), np.uint8))
        f.create_dataset("points_16", data=np.zeros((1, 4096, 3), np.uint8))
    with pytest.raises(ValueError) as error:
        open_datafile(other)
    message = str(error.value)
    assert "missing datasets values_16, points_32, values_32, points_64, values_64" in message
    assert "points_16, voxels" in message  # what it has

    odd = tmp_path / "odd.hdf5"
    with h5py.File(odd, "w") as f:
        f.create_dataset("voxels", data=np.zeros((1, 64, 64, 64, 1), np.uint8))
        for level, count in [(16, 100), (32, 100), (64, 100)]:
            f.create_dataset(f"points_{level}", data=np.zeros((1, count, 3), np.uint8))
            f.create_dataset(f"values_{level}", data=np.zeros((1, count, 1), np.uint8))
    with pytest.raises(ValueError, match="matches neither"):
        open_datafile(odd)


def _tampered(path: Path, key: str, value: np.ndarray) -> Path:
    """The file at `path` with dataset `key` replaced by `value` (as a careless converter might write it)."""
    with h5py.File(path, "a") as f:
        del f[key]
        f.create_dataset(key, data=value)
    return path


@pytest.mark.parametrize(
    "key, make, message",
    [
        ("points_16", lambda n: np.zeros((n, 4096, 2), np.uint8),
         r"dataset 'points_16' has shape \[2, 4096, 2\], expected \[N, P, 3\]"),
        ("values_64", lambda n: np.zeros((n, 4096, 1), np.uint8),
         r"dataset 'values_64' has shape \[2, 4096, 1\], expected \[N, 16384, 1\]"),
        ("values_32", lambda n: np.zeros((n - 1, 4096, 1), np.uint8),
         r"dataset 'values_32' has 1 rows but 'voxels' has 2"),
        ("voxels", lambda n: np.full((n, 64, 64, 64, 1), 0.5, np.float32),
         r"dataset 'voxels' is float32, expected integers \(uint8\)"),
        ("voxels", lambda n: np.full((n, 64, 64, 64, 1), 255, np.uint8),
         r"dataset 'voxels' holds values from 255 to 255 in its first shape, expected 0..1 \(occupancy\)"),
        ("pixels", lambda n: np.zeros((n, 0, 137, 137), np.uint8), r"dataset 'pixels' holds no views"),
        ("pixels", lambda n: np.zeros((n, 24, 128, 128), np.uint8),
         r"dataset 'pixels' has shape \[2, 24, 128, 128\], expected \[N, V, 137, 137\]"),
        ("meta/centre", lambda n: np.zeros((n + 1, 3), np.float32),
         r"dataset 'meta/centre' has shape \[3, 3\], expected \[2, 3\]"),
        ("meta/cameras", lambda n: np.zeros((n, 4, 5), np.float32),
         r"dataset 'meta/cameras' has shape \[2, 4, 5\], expected \[2, 24, 5\]"),
    ],
    ids=["points-2-columns", "values-fewer-points", "row-counts-differ", "float-voxels", "voxels-255",
         "no-views", "views-not-137", "meta-rows", "cameras-views"],
)
def test_open_checks_every_dataset_and_names_the_wrong_one(tmp_path, records, key, make, message):
    path = _tampered(write_datafile(tmp_path / "d.hdf5", records[:2], ["a/1", "a/2"]), key, make(2))
    with pytest.raises(ValueError, match=message):
        open_datafile(path)


def test_any_number_of_views_round_trips_and_mixed_counts_are_refused(tmp_path, records):
    few = [dict(r, pixels=r["pixels"][:4], cameras=r["cameras"][:4]) for r in records[:2]]
    path = write_datafile(tmp_path / "four.hdf5", few, ["a/1", "a/2"])
    with open_datafile(path) as data:
        assert data.pixels.shape == (2, 4, 137, 137) and data.meta["cameras"].shape == (2, 4, 5)
        np.testing.assert_array_equal(data.pixels[1, 3], records[1]["pixels"][3])
    one = dict(records[0], pixels=records[0]["pixels"][:1], cameras=records[0]["cameras"][:1])
    with open_datafile(write_datafile(tmp_path / "one.hdf5", [one], ["a/1"])) as data:
        assert data.pixels.shape == (1, 1, 137, 137)
    with pytest.raises(ValueError, match="shape 1 has 24 views but the file's first shape has 4"):
        write_datafile(tmp_path / "mixed.hdf5", [few[0], records[1]], ["a/1", "a/2"])
    with pytest.raises(ValueError, match=r"'cameras' has shape \(24, 5\), expected \(4, 5\)"):
        write_datafile(tmp_path / "mixed.hdf5", [dict(few[0], cameras=records[0]["cameras"])], ["a/1"])
    assert not (tmp_path / "mixed.hdf5").exists()

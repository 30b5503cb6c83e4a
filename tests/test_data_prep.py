"""data_prep end to end on the real fixtures: discovery, preparation, R2N2 views, resume, faults,
shards, and the command line."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from data_prep import pipeline, sources
from data_prep.__main__ import main as data_prep_main
from imnet.config import DataPrepConfig
from imnet.datafile import open_datafile
from imnet.images import composite_on_white, load_image
from imnet.mesh import MeshError, axes_rotation
from imnet.sampling import indices_to_coords

DATA = Path(__file__).parent / "data"
SHAPENET = DATA / "shapenet_v2_sample"
R2N2 = DATA / "r2n2_sample"
CHAIR = "03001627/353bbd3b916426d24502f857a1cf320e"  # the smallest fixture mesh (28 kB)


def test_shapenet_v2_discovery_and_filters():
    found = sources.shapenet_sources(SHAPENET)
    assert [s.name for s in found] == [
        "02691156/4de653411d132abdf1e2558bb9cfc329",
        "03001627/341c9b0583d31770492d9da2668ec34c",
        CHAIR,
    ]
    assert all(s.path.endswith("model_normalized.obj") and s.binvox.endswith(".solid.binvox") for s in found)
    assert [s.name for s in sources.shapenet_sources(SHAPENET, ["chair"])] == [f.name for f in found[1:]]
    assert [s.name for s in sources.shapenet_sources(SHAPENET, ids=[CHAIR])] == [CHAIR]
    with pytest.raises(FileNotFoundError, match="requested model ids"):
        sources.shapenet_sources(SHAPENET, ids=["nope"])
    with pytest.raises(FileNotFoundError, match="synset 04379243"):
        sources.shapenet_sources(SHAPENET, ["table"])


def test_shapenet_v1_layout(tmp_path):
    model = tmp_path / "03001627" / "abc"
    model.mkdir(parents=True)
    shutil.copy(SHAPENET / CHAIR / "models" / "model_normalized.obj", model / "model.obj")
    (found,) = sources.shapenet_sources(tmp_path)
    assert found.name == "03001627/abc" and found.path == str(model / "model.obj") and not found.binvox


def test_binvox_and_r2n2_discovery():
    found = sources.binvox_sources(R2N2 / "ShapeNetVox32")
    assert [s.name for s in found] == ["03001627/1a6f615e8b1b5ae4dbbc9440457e303e"]
    with_views = sources.attach_r2n2_views(found, R2N2 / "ShapeNetRendering")
    assert with_views[0].views_dir.endswith("1a6f615e8b1b5ae4dbbc9440457e303e/rendering")
    v2 = sources.binvox_sources(SHAPENET)
    assert len(v2) == 3 and all(s.path.endswith(".solid.binvox") for s in v2)  # surface.binvox skipped


def _back_z(voxels: np.ndarray) -> float:
    """Mean z of the top quarter of a chair's voxels (its back); the grid centre is 31.5."""
    occupied = np.argwhere(voxels)
    heights = occupied[:, 1]
    return float(occupied[heights > heights.min() + 0.75 * np.ptp(heights), 2].mean())


def test_binvox_axes_of_other_files(tmp_path):
    """IM-NET's 256^3 chair faces +z; --front +z turns it to face -z (its back towards +z), like
    ShapeNet v2's chairs, while files recognised by name keep their known axes."""
    shutil.copy(DATA / "imnet_original_sample" / "1.binvox", tmp_path / "1.binvox")
    (vox32,) = sources.binvox_sources(R2N2 / "ShapeNetVox32", front="+z")
    assert (vox32.up, vox32.front) == ("+y", "+x")
    backs = {}
    for front in ["-z", "+z"]:
        (found,) = sources.binvox_sources(tmp_path, front=front)
        assert found.front == front
        out = tmp_path / front
        pipeline.prepare([found], DataPrepConfig(out_dir=str(out), render=False, train_fraction=1.0))
        (path,) = out.glob("*_train.hdf5")
        backs[front] = _back_z(np.asarray(open_datafile(path).voxels[0], bool))
    assert backs["-z"] < 25 < 38 < backs["+z"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The fixture chairs prepared from their meshes, without views (fast)."""
    out = tmp_path_factory.mktemp("prepared")
    config = DataPrepConfig(out_dir=str(out), render=False)
    summary = pipeline.prepare(sources.shapenet_sources(SHAPENET, ["chair"]), config)
    return out, summary


def test_prepare_writes_imnet_layout(prepared):
    out, summary = prepared
    assert summary.done == 2 and not summary.failed
    assert sorted(Path(p).name for p in summary.outputs) == ["03001627_test.hdf5", "03001627_train.hdf5"]
    train = open_datafile(out / "03001627_train.hdf5")
    assert train.layout == "imnet-v1" and len(train) == 1
    assert train.names == ["03001627/341c9b0583d31770492d9da2668ec34c"]  # first 80% of sorted ids
    assert (out / "03001627_train.txt").read_text().split() == train.names
    assert train.pixels is None
    # Points' values are the shape's solid occupancy: inside points lie inside the mesh.
    import trimesh

    mesh = trimesh.load(SHAPENET / train.names[0] / "models" / "model_normalized.obj", force="mesh")
    centre, scale = train.meta["centre"][0], train.meta["scale"][0]
    np.testing.assert_allclose(scale, np.linalg.norm(np.ptp(mesh.vertices, axis=0)), rtol=1e-5)
    np.testing.assert_allclose(centre, mesh.bounds.mean(axis=0), atol=1e-5)
    pts = train.points(16)[0]
    vals = train.values(16)[0]
    assert 0 < vals.mean() < 1
    world = pts * scale + centre  # the documented inverse of the normalisation
    inside = world[vals == 1]
    tol = 0.01 * scale
    assert np.all((inside >= mesh.bounds[0] - tol) & (inside <= mesh.bounds[1] + tol))
    # and the occupied voxels span the mesh's bounding box (no axis swap, no offset)
    occupied = np.argwhere(train.voxels[0])
    lo, hi = (occupied.min(0) / 64 - 0.5) * scale + centre, ((occupied.max(0) + 1) / 64 - 0.5) * scale + centre
    np.testing.assert_allclose(lo, mesh.bounds[0], atol=2 * scale / 64)
    np.testing.assert_allclose(hi, mesh.bounds[1], atol=2 * scale / 64)


def test_rerun_resumes_and_skips_done_shapes(prepared):
    out, _ = prepared
    summary = pipeline.prepare(sources.shapenet_sources(SHAPENET, ["chair"]), DataPrepConfig(out_dir=str(out), render=False))
    assert summary.done == 0 and summary.skipped == 2


def test_interrupted_run_resumes(tmp_path):
    found = sources.shapenet_sources(SHAPENET, ids=[CHAIR])
    config = DataPrepConfig(out_dir=str(tmp_path), render=False)
    # An interruption leaves at most a temporary file behind, never a record or an HDF5 file.
    record = pipeline.record_path(tmp_path, CHAIR)
    record.parent.mkdir(parents=True)
    (record.parent / f".{record.name}.tmp").write_bytes(b"partial")
    summary = pipeline.prepare(found, config)
    assert summary.done == 1 and (tmp_path / "03001627_train.hdf5").is_file()
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_meshes_are_logged_not_fatal(tmp_path):
    root = tmp_path / "meshes" / "chair"
    root.mkdir(parents=True)
    shutil.copy(SHAPENET / CHAIR / "models" / "model_normalized.obj", root / "good.obj")
    (root / "garbage.obj").write_bytes(b"\x00\x01 this is not a mesh \xff" * 10)
    (root / "empty.obj").write_text("")
    (root / "nan.obj").write_text("v 0 0 0\nv 1 0 nan\nv 0 1 0\nf 1 2 3\n")
    (root / "flat.obj").write_text("v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n")
    config = DataPrepConfig(out_dir=str(tmp_path / "out"), render=False)
    summary = pipeline.prepare(sources.mesh_folder_sources(tmp_path / "meshes"), config)
    assert summary.done == 1
    reasons = dict(summary.failed)
    assert set(reasons) == {"chair/garbage", "chair/empty", "chair/nan", "chair/flat"}
    assert "NaN" in reasons["chair/nan"]
    failures = (tmp_path / "out" / pipeline.FAILURES_FILE).read_text()
    assert "chair/nan" in failures and "chair/garbage" in failures
    data = open_datafile(tmp_path / "out" / "chair_train.hdf5")
    assert data.names == ["chair/good"]
    # A gigantic mesh is refused with its reason instead of stalling a worker.
    (good,) = [s for s in sources.mesh_folder_sources(tmp_path / "meshes") if s.name == "chair/good"]
    with pytest.raises(MeshError, match="more than max_faces=100"):
        pipeline.prepare_shape(good, DataPrepConfig(render=False, max_faces=100))


def test_r2n2_binvox_with_views(tmp_path):
    found = sources.attach_r2n2_views(sources.binvox_sources(R2N2 / "ShapeNetVox32"), R2N2 / "ShapeNetRendering")
    config = DataPrepConfig(out_dir=str(tmp_path), train_fraction=1.0)
    summary = pipeline.prepare(found, config)
    assert summary.done == 1, summary.failed
    data = open_datafile(tmp_path / "03001627_train.hdf5")
    assert data.pixels.shape == (1, 24, 137, 137)
    views_dir = Path(found[0].views_dir)
    for i in (0, 13):
        expected = np.rint(composite_on_white(load_image(views_dir / f"{i:02d}.png")) * 255).astype(np.uint8)
        np.testing.assert_array_equal(data.pixels[0, i], expected)
    assert data.pixels[0, 0, 0, 0] == 255  # white background, dark object
    assert data.pixels[0, 0].min() < 100
    # 32^3 voxels upsampled: the solid is blocky but must be a chair-sized, non-trivial solid.
    assert 0.01 < data.voxels[0].mean() < 0.5
    # The voxels were turned from ShapeNet v1's frame into v2's: rendered with R2N2's own camera
    # rows, their silhouettes overlap R2N2's images (measured: IoU 0.76-0.86 from 32^3 voxels; the
    # unturned v1 frame gives 0.58-0.72).
    from imnet.extract import grid_to_mesh
    from imnet.render import render_views

    surface = grid_to_mesh(np.asarray(data.voxels[0], np.float32))  # R2N2's cameras assume this normalisation
    views = list(range(0, 24, 3))
    ours = render_views(surface, data.meta["cameras"][0][views]) < 250
    theirs = data.pixels[0][views] < 250
    overlap = [(a & b).sum() / (a | b).sum() for a, b in zip(ours, theirs)]
    assert np.mean(overlap) > 0.78 and min(overlap) > 0.7


def test_shapenet_v1_meshes_are_turned_into_the_v2_frame(tmp_path):
    import trimesh

    v2_mesh = SHAPENET / CHAIR / "models" / "model_normalized.obj"
    v1 = tmp_path / "v1" / "03001627" / "353bbd3b916426d24502f857a1cf320e"
    v1.mkdir(parents=True)
    mesh = trimesh.load(v2_mesh, force="mesh")
    turn = np.eye(4)
    turn[:3, :3] = axes_rotation(sources.V1_UP, sources.V1_FRONT).T
    mesh.apply_transform(turn)  # how ShapeNet v1 stores the same chair
    mesh.export(v1 / "model.obj")
    (found,) = sources.shapenet_sources(tmp_path / "v1")
    assert (found.up, found.front) == ("+y", "+x")
    a = pipeline.prepare_shape(found, DataPrepConfig(render=False))
    b = pipeline.prepare_shape(sources.shapenet_sources(SHAPENET, ids=[CHAIR])[0], DataPrepConfig(render=False))
    overlap = (a["voxels"] & b["voxels"]).sum() / (a["voxels"] | b["voxels"]).sum()
    assert overlap > 0.97


def test_official_binvox_voxels_agree_with_our_voxeliser(tmp_path):
    found = sources.shapenet_sources(SHAPENET, ids=[CHAIR])
    ours = pipeline.prepare(found, DataPrepConfig(out_dir=str(tmp_path / "mesh"), render=False, train_fraction=1.0))
    theirs = pipeline.prepare(found, DataPrepConfig(out_dir=str(tmp_path / "binvox"), render=False, train_fraction=1.0, voxels_from="binvox"))
    assert ours.done == theirs.done == 1
    a = open_datafile(tmp_path / "mesh" / "03001627_train.hdf5").voxels[0].astype(bool)
    b = open_datafile(tmp_path / "binvox" / "03001627_train.hdf5").voxels[0].astype(bool)
    # Every official voxel lies within one cell of ours. The converse does not hold for this chair:
    # its seat and back are zero-thickness sheets of back-to-back faces that binvox dropped (its
    # solid file equals its surface file), while our voxeliser keeps them.
    def recall(reference, candidate):
        return (reference & ndimage.binary_dilation(candidate, np.ones((3, 3, 3)))).sum() / reference.sum()

    assert recall(b, a) > 0.98
    assert recall(b.transpose(2, 1, 0), a) < 0.8  # a wrong axis order is far off
    assert a.sum() > b.sum()


def test_shards_then_merge_equal_single_run(tmp_path, prepared):
    found = sources.shapenet_sources(SHAPENET, ["chair"])
    for k in range(2):
        pipeline.prepare(found, DataPrepConfig(out_dir=str(tmp_path / f"shard{k}"), render=False, shard=f"{k}/2"))
    assert not list((tmp_path / "shard0").glob("*.hdf5"))  # shards only write records
    pipeline.merge([tmp_path / "shard0", tmp_path / "shard1"], DataPrepConfig(out_dir=str(tmp_path / "merged")))
    single, _ = prepared
    for split in ("train", "test"):
        a = open_datafile(tmp_path / "merged" / f"03001627_{split}.hdf5")
        b = open_datafile(single / f"03001627_{split}.hdf5")
        assert a.names == b.names
        np.testing.assert_array_equal(a.points(64), b.points(64))  # deterministic per shape name
        np.testing.assert_array_equal(a.voxels, b.voxels)


def test_train_fraction_split():
    names = [f"chair/{i}" for i in range(5)]
    split = lambda fraction: pipeline.split_names(names, DataPrepConfig(train_fraction=fraction))
    assert split(0.8) == {"train": names[:4], "test": names[4:]}
    assert split(0.95) == {"train": names[:4], "test": names[4:]}  # rounding keeps a test shape
    assert split(0.05) == {"train": names[:1], "test": names[1:]}  # ... and a training shape
    assert split(1.0) == {"train": names, "test": []}
    assert split(0.0) == {"train": [], "test": names}  # a held-back evaluation set


def test_split_file(tmp_path):
    split = tmp_path / "split.json"
    split.write_text('{"train": ["353bbd3b916426d24502f857a1cf320e"], "test": ["03001627/341c9b0583d31770492d9da2668ec34c"]}')
    config = DataPrepConfig(split_file=str(split))
    names = ["03001627/341c9b0583d31770492d9da2668ec34c", CHAIR]
    assert pipeline.split_names(names, config) == {"train": [CHAIR], "test": [names[0]]}


def test_cli_help_and_user_errors(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        data_prep_main(["shapenet", "--help"])
    assert e.value.code == 0 and "--voxels-from" in capsys.readouterr().out
    assert data_prep_main(["shapenet", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "ShapeNet folder not found" in capsys.readouterr().err
    assert data_prep_main(["meshes", str(tmp_path), "--out", str(tmp_path / "o"), "--shard", "3/2"]) == 2
    assert data_prep_main(["merge", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "no prepared shapes" in capsys.readouterr().err


def test_point_coordinates_convention():
    np.testing.assert_allclose(indices_to_coords(np.array([0, 255])), [0.5 / 256 - 0.5, 0.5 - 0.5 / 256])


def test_synthetic_cli_renders_views_through_the_mesh_path(tmp_path, capsys):
    out = tmp_path / "out"
    assert data_prep_main(["synthetic", "--categories", "chair", "table", "--count", "2", "--out", str(out), "--views", "24"]) == 0
    assert "4 shapes prepared" in capsys.readouterr().out
    assert sorted(p.name for p in (out / "meshes").iterdir()) == ["03001627", "04379243"]  # a plain mesh folder
    data = open_datafile(out / "03001627_train.hdf5")
    assert data.names == ["03001627/synthetic_chair_0000"]
    views = np.asarray(data.pixels[0])
    assert views.shape == (24, 137, 137)
    assert (views[:, 0, :] == 255).all() and (views[:, :, 0] == 255).all()  # white background
    assert (views.reshape(24, -1).min(axis=1) < 160).all()  # a darker object in every view
    assert len({v.tobytes() for v in views}) == 24  # 24 different viewpoints
    cameras = data.meta["cameras"][0]
    assert ((cameras[:, 1] >= 25) & (cameras[:, 1] <= 30)).all()  # R2N2-like elevations
    assert len(np.unique(cameras[:, 0])) == 24
    # Rerunning resumes: nothing is generated or prepared again.
    assert data_prep_main(["synthetic", "--categories", "chair", "table", "--count", "2", "--out", str(out)]) == 0
    assert "0 shapes prepared, 4 already done" in capsys.readouterr().out


def test_a_turned_copy_prepared_with_its_axes_gives_the_same_voxels(tmp_path, capsys):
    """A z-up mesh facing +x (as CAD tools export), prepared with --up +z --front +x, is the fixture
    exactly; its metadata records the axes, and evaluation reads its ground truth back the same."""
    from eval.run import ground_truth
    from imnet.mesh import from_shapenet_axes, load_mesh

    original, turned = tmp_path / "original" / "chair", tmp_path / "turned" / "chair"
    original.mkdir(parents=True)
    turned.mkdir(parents=True)
    source = SHAPENET / CHAIR / "models" / "model_normalized.obj"
    shutil.copy(source, original / "a.obj")
    from_shapenet_axes(load_mesh(source), "+z", "+x").export(turned / "a.obj")  # the same chair, other axes
    for name, axes in (("original", []), ("turned", ["--up", "+z", "--front", "+x"])):
        argv = ["meshes", str(tmp_path / name), "--out", str(tmp_path / f"{name}_out"), "--no-render", *axes]
        assert data_prep_main(argv) == 0
    assert "source axes (up, front): +z +x" in capsys.readouterr().err
    a = open_datafile(tmp_path / "original_out" / "chair_train.hdf5")
    b = open_datafile(tmp_path / "turned_out" / "chair_train.hdf5")
    np.testing.assert_array_equal(a.voxels, b.voxels)
    for level in (16, 32, 64):
        np.testing.assert_array_equal(a.points(level), b.points(level))
    assert (a.meta["up"], a.meta["front"], b.meta["up"], b.meta["front"]) == (["+y"], ["-z"], ["+z"], ["+x"])
    np.testing.assert_allclose(ground_truth(b, 0).mesh.vertices, ground_truth(a, 0).mesh.vertices, atol=1e-6)
    # Prepared without its axes, the turned copy is another shape.
    wrong = pipeline.prepare_shape(sources.mesh_folder_sources(tmp_path / "turned")[0], DataPrepConfig(render=False))
    assert (wrong["voxels"] != a.voxels[0][..., None]).mean() > 0.01


# ---------------------------------------------------------------------------------------------
# Bad input and faults: each gives one line (or its reason in failures.csv) and no partial output


def _fixture_chair_folder(root: Path, names: list[str]) -> Path:
    """<root>/chair/<name> copies of the smallest fixture mesh (names with their suffix)."""
    (root / "chair").mkdir(parents=True)
    for name in names:
        shutil.copy(SHAPENET / CHAIR / "models" / "model_normalized.obj", root / "chair" / name)
    return root


def test_meshes_sharing_a_stem_become_two_shapes_and_the_summary_counts_the_rows(tmp_path, capsys):
    import trimesh

    root = _fixture_chair_folder(tmp_path / "meshes", ["chair.obj", "other.obj"])
    trimesh.load(root / "chair" / "chair.obj", force="mesh").export(root / "chair" / "chair.ply")
    names = [s.name for s in sources.mesh_folder_sources(root)]
    assert names == ["chair/chair.obj", "chair/chair.ply", "chair/other"]
    out = tmp_path / "out"
    assert data_prep_main(["meshes", str(root), "--out", str(out), "--no-render", "--workers", "1"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("3 shapes prepared, 0 already done, 0 failed")
    assert line.endswith(f"wrote {out / 'chair_train.hdf5'} (2 shapes), {out / 'chair_test.hdf5'} (1 shape)")
    written = [name for split in ("train", "test") for name in open_datafile(out / f"chair_{split}.hdf5").names]
    assert sorted(written) == names
    # Sources that would still collide are refused before any work, naming both files.
    twice = [sources.ShapeSource("chair/a", "mesh", "x/a.obj"), sources.ShapeSource("chair/a", "mesh", "y/a.obj")]
    with pytest.raises(ValueError, match="x/a.obj and y/a.obj would both be shape chair/a"):
        pipeline.prepare(twice, DataPrepConfig(out_dir=str(tmp_path / "never"), render=False))
    assert not (tmp_path / "never").exists()


def test_a_run_where_every_shape_fails_exits_1_and_says_nothing_was_written(tmp_path, capsys):
    root = tmp_path / "meshes" / "chair"
    root.mkdir(parents=True)
    (root / "a.obj").write_text("v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n")  # flat
    (root / "b.off").write_bytes(bytes(range(256)) * 4)  # not a mesh
    out = tmp_path / "out"
    assert data_prep_main(["meshes", str(tmp_path / "meshes"), "--out", str(out), "--no-render", "--workers", "1"]) == 1
    captured = capsys.readouterr()
    assert captured.out.strip().endswith("2 failed in " + captured.out.split(" failed in ")[1].split(";")[0]
                                         + "; nothing written: no shape could be prepared")
    assert "chair/b: " in captured.err and "holds binary data" in captured.err
    assert not list(out.glob("*.hdf5")) and (out / "failures.csv").is_file()


def test_any_view_count_end_to_end(tmp_path, tiny_checkpoint, capsys):
    """--views 4: the file records 4 views, training draws from them, reconstruct checks --view against them."""
    from imnet.datasets import SVRDataset
    from reconstruct import main as reconstruct_main

    root = _fixture_chair_folder(tmp_path / "meshes", ["a.obj"])
    out = tmp_path / "out"
    assert data_prep_main(["meshes", str(root), "--out", str(out), "--views", "4", "--workers", "1"]) == 0
    data = open_datafile(out / "chair_train.hdf5")
    assert data.pixels.shape == (1, 4, 137, 137) and data.meta["cameras"].shape == (1, 4, 5)
    assert len({data.pixels[0, v].tobytes() for v in range(4)}) == 4 and data.pixels[0, 3].min() < 160
    import torch

    torch.manual_seed(0)
    dataset = SVRDataset(out / "chair_train.hdf5")
    assert {dataset[0]["view"] for _ in range(100)} == {0, 1, 2, 3}
    meshes = tmp_path / "meshes_out"
    argv = ["--checkpoint", str(tiny_checkpoint), str(out / "chair_train.hdf5"), "-o", str(meshes), "--resolution", "16"]
    assert reconstruct_main([*argv, "--view", "3"]) == 0
    assert reconstruct_main([*argv, "--view", "4"]) == 2
    assert "--view must be in 0..3, got 4" in capsys.readouterr().err
    # 3D-R2N2 has 24 renderings per shape: more is refused before any work.
    assert data_prep_main(["binvox", str(R2N2 / "ShapeNetVox32"), "--r2n2", str(R2N2 / "ShapeNetRendering"),
                           "--views", "30", "--out", str(tmp_path / "r2n2")]) == 2
    assert "3D-R2N2 rendered 24 views per shape" in capsys.readouterr().err
    assert data_prep_main(["meshes", str(root), "--views", "0", "--out", str(tmp_path / "none")]) == 2
    assert "--views must be at least 1" in capsys.readouterr().err
    assert not (tmp_path / "r2n2").exists() and not (tmp_path / "none").exists()


@pytest.mark.parametrize("option, message", [
    (["--shard", "3/2"], "need 0 <= k < n"),
    (["--split-file", "missing.json"], "split file missing.json must be JSON"),
    (["--workers", "0"], "--workers must be at least 1"),
])
def test_bad_options_are_refused_before_any_folder_is_made(tmp_path, capsys, option, message):
    out = tmp_path / "out"
    assert data_prep_main(["synthetic", "--count", "1", "--out", str(out), "--no-render", *option]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("data_prep: error: ") and message in err and "\n" not in err
    assert not out.exists()


def test_an_output_path_below_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    root = _fixture_chair_folder(tmp_path / "meshes", ["a.obj"])
    for out, message in ((tmp_path / "file" / "out", "cannot be created: "), (tmp_path / "file", "is not a folder")):
        assert data_prep_main(["meshes", str(root), "--out", str(out), "--no-render", "--workers", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"data_prep: error: --out {out}") and message in err and "\n" not in err
    assert data_prep_main(["merge", str(tmp_path), "--out", str(tmp_path / "file" / "x")]) == 2
    assert (tmp_path / "file").read_text() == ""


def test_huge_coordinates_get_their_true_reason_and_no_numpy_warning(tmp_path):
    import trimesh

    root = tmp_path / "meshes" / "chair"
    root.mkdir(parents=True)
    box = trimesh.creation.box(extents=(0.4, 0.3, 0.2))
    box.export(root / "unit.obj")
    big = box.copy()
    big.vertices *= 1e30  # far from 1, still within float32: prepared like the unit box
    big.export(root / "big.obj")
    huge = box.copy()
    huge.vertices *= 1e300
    huge.export(root / "huge.obj")
    config = DataPrepConfig(out_dir=str(tmp_path / "out"), render=False, train_fraction=1.0)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow warnings would fail the test
        summary = pipeline.prepare(sources.mesh_folder_sources(tmp_path / "meshes", up="+z", front="+x"), config)
    reasons = dict(summary.failed)
    assert list(reasons) == ["chair/huge"]
    assert "bounding-box diagonal is 5.39e+299" in reasons["chair/huge"] and "float32" in reasons["chair/huge"]
    data = open_datafile(tmp_path / "out" / "chair_train.hdf5")
    assert data.names == ["chair/big", "chair/unit"]
    np.testing.assert_array_equal(data.voxels[0], data.voxels[1])
    np.testing.assert_allclose(data.meta["scale"][0], 1e30 * data.meta["scale"][1], rtol=1e-6)


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(c) for c in path.read_text().split()} if path.is_file() else set()


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"  # a zombie has exited
    except (OSError, IndexError):
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads the process tree from Linux's /proc")
def test_workers_exit_when_the_main_process_is_killed(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    root = _fixture_chair_folder(tmp_path / "meshes", [f"c{i:02d}.obj" for i in range(40)])
    out = tmp_path / "out"
    main = subprocess.Popen([sys.executable, "-m", "data_prep", "meshes", str(root), "--out", str(out),
                             "--no-render", "--workers", "2"], cwd=Path(__file__).parents[1],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list((out / "shapes").glob("*/*.npz")):  # the workers are preparing shapes
            assert main.poll() is None and time.monotonic() < deadline, "data_prep ended or never started work"
            time.sleep(0.1)
        children = _children(main.pid)
        assert len(children) >= 2  # the workers (and multiprocessing's resource tracker)
        os.kill(main.pid, signal.SIGKILL)
        main.wait()
        deadline = time.monotonic() + 5
        while any(_alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [c for c in children if _alive(c)], "worker processes outlived the main process"
        done = len(list((out / "shapes").glob("*/*.npz")))
        time.sleep(1)
        assert len(list((out / "shapes").glob("*/*.npz"))) == done  # and nobody prepares shapes any more
    finally:
        if main.poll() is None:
            main.kill()

"""reconstruct.py end to end: every input kind, every export format, options, and user mistakes.

The model is the tiny checkpoint of conftest.py, whose field is a box chair for any image.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from conftest import TINY_MODEL, chair_occupancy
from imnet.checkpoint import save_checkpoint
from imnet.config import ModelConfig, config_to_dict
from imnet.metrics import iou_occupancy, sample_iou_points
from imnet.model import IMNet
from reconstruct import EXPORT_FORMATS, main

DATA = Path(__file__).parent / "data"
R2N2_VIEW = DATA / "r2n2_sample/ShapeNetRendering/03001627/1a6f615e8b1b5ae4dbbc9440457e303e/rendering/00.png"
PHOTO = DATA / "real_photos/chair_06_01.png"


def run(*args) -> int:
    return main([str(a) for a in args])


def test_r2n2_view_to_mesh_is_the_models_shape(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "chair.obj"
    assert run("--checkpoint", tiny_checkpoint, R2N2_VIEW, "-o", out, "--resolution", 64, "--device", "cpu") == 0
    assert f"1 meshes written: {out}" in capsys.readouterr().out
    mesh = trimesh.load(out, force="mesh")
    assert np.all(mesh.bounds[0] >= -0.5) and np.all(mesh.bounds[1] <= 0.5)
    points = sample_iou_points(20_000, seed=1)
    assert iou_occupancy(mesh.contains(points), chair_occupancy(points) > 0.5) > 0.85
    assert mesh.volume > 0  # outward normals


@pytest.mark.parametrize("fmt", EXPORT_FORMATS)
def test_every_format_reloads(tiny_checkpoint, tmp_path, fmt):
    out = tmp_path / f"mesh.{fmt}"
    assert run("--checkpoint", tiny_checkpoint, PHOTO, "-o", out, "--resolution", 40) == 0
    mesh = trimesh.load(out, force="mesh")
    assert len(mesh.faces) > 100
    assert not list(tmp_path.glob(".*tmp"))


def test_folder_input_with_extras_at_a_non_power_of_two(tiny_checkpoint, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in (DATA / "real_photos").iterdir():
        shutil.copy(p, photos / p.name)
    out = tmp_path / "meshes"
    assert run("--checkpoint", tiny_checkpoint, photos, "-o", out, "--format", "ply", "--resolution", 50,
               "--save-input", "--save-code", "--preview") == 0
    for stem in ("chair_06_01", "table_08_02"):
        assert trimesh.load(out / f"{stem}.ply").vertices.shape[1] == 3
        seen = np.asarray(Image.open(out / f"{stem}_input.png"))
        assert seen.shape == (128, 128) and seen[0, 0] == 255 and seen.min() < 128
        assert np.load(out / f"{stem}_code.npy").shape == (TINY_MODEL.code_dim,)
        preview = Image.open(out / f"{stem}_preview.png")
        assert preview.size == (512, 256)


def test_hdf5_split_input_and_original_frame(tiny_checkpoint, tmp_path):
    from data_prep import pipeline, sources
    from imnet.config import DataPrepConfig
    from imnet.datafile import open_datafile
    from imnet.mesh import normalise, to_shapenet_axes

    found = sources.attach_r2n2_views(sources.binvox_sources(DATA / "r2n2_sample/ShapeNetVox32"), DATA / "r2n2_sample/ShapeNetRendering")
    pipeline.prepare(found, DataPrepConfig(out_dir=str(tmp_path / "data"), train_fraction=1.0))
    h5 = tmp_path / "data" / "03001627_train.hdf5"
    for folder, extra in (("object", []), ("source", ["--original-frame"])):
        assert run("--checkpoint", tiny_checkpoint, h5, "--view", 3, "-o", tmp_path / folder, "--resolution", 32, *extra) == 0
    (mesh_path,) = (tmp_path / "source").glob("*.obj")
    assert mesh_path.name == "03001627_1a6f615e8b1b5ae4dbbc9440457e303e_view03.obj"
    in_object_space = trimesh.load(tmp_path / "object" / mesh_path.name, force="mesh", process=False)
    in_source_frame = trimesh.load(mesh_path, force="mesh", process=False)
    # ShapeNetVox32 is in ShapeNet v1's axes (front +x): the mesh goes back to those axes, position and size.
    meta = open_datafile(h5).meta
    assert (meta["up"][0], meta["front"][0]) == ("+y", "+x")
    assert not np.allclose(in_source_frame.bounds, in_object_space.bounds, atol=0.05)
    forward = normalise(to_shapenet_axes(in_source_frame, "+y", "+x"), meta["centre"][0], meta["scale"][0])
    np.testing.assert_allclose(forward.vertices, in_object_space.vertices, atol=1e-5)
    assert run("--checkpoint", tiny_checkpoint, h5, "--view", 24, "-o", tmp_path / "object") == 2


def test_dense_and_coarse_to_fine_give_the_same_mesh(tiny_checkpoint, tmp_path):
    a, b = tmp_path / "a.ply", tmp_path / "b.ply"
    assert run("--checkpoint", tiny_checkpoint, PHOTO, "-o", a, "--resolution", 48, "--method", "dense") == 0
    assert run("--checkpoint", tiny_checkpoint, PHOTO, "-o", b, "--resolution", 48) == 0
    np.testing.assert_allclose(trimesh.load(a).vertices, trimesh.load(b).vertices, atol=1e-6)


def test_the_default_level_is_the_checkpoints_own(tiny_checkpoint, tmp_path, capsys):
    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    checkpoint["model"]["decoder.level"] = torch.tensor(0.8)
    calibrated = tmp_path / "calibrated.pt"
    save_checkpoint(calibrated, {k: v for k, v in checkpoint.items() if k not in ("format", "version")})
    a, b, c = tmp_path / "a.ply", tmp_path / "b.ply", tmp_path / "c.ply"
    assert run("--checkpoint", calibrated, PHOTO, "-o", a, "--resolution", 40) == 0
    assert '"level": 0.8' in capsys.readouterr().out
    assert run("--checkpoint", tiny_checkpoint, PHOTO, "-o", b, "--resolution", 40, "--level", 0.8) == 0
    assert run("--checkpoint", calibrated, PHOTO, "-o", c, "--resolution", 40, "--level", 0.5) == 0
    np.testing.assert_array_equal(trimesh.load(a).vertices, trimesh.load(b).vertices)
    assert trimesh.load(c, force="mesh").volume > trimesh.load(a, force="mesh").volume  # a lower level: a fatter shape
    assert run("--checkpoint", calibrated, PHOTO, "-o", c, "--level", 1.5) == 2
    assert "--level must be in (0, 1)" in capsys.readouterr().err


def test_user_mistakes_give_one_line_and_no_output(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out.obj"
    assert run("--checkpoint", tiny_checkpoint, tmp_path / "missing.png", "-o", out) == 2
    assert "input not found" in capsys.readouterr().err

    text = tmp_path / "notes.png"
    text.write_text("not an image")
    empty = tmp_path / "empty.png"
    Image.new("RGB", (64, 64), "white").save(empty)  # nothing in it
    for bad in (text, empty):
        assert run("--checkpoint", tiny_checkpoint, bad, "-o", out) == 1
        err = capsys.readouterr().err
        assert "skipped" in err and "Traceback" not in err
    assert not out.exists()

    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    assert run("--checkpoint", garbage, PHOTO, "-o", out) == 2
    assert "not a readable imnet checkpoint" in capsys.readouterr().err
    assert run("--checkpoint", tmp_path / "nope.pt", PHOTO, "-o", out) == 2
    assert run("--checkpoint", tiny_checkpoint, PHOTO, "-o", out, "--resolution", 2) == 2
    assert run("--checkpoint", tiny_checkpoint, PHOTO, "-o", out, "--resolution", 100000) == 2
    assert "--resolution must be in 8..1024" in capsys.readouterr().err
    assert not out.exists()


def test_an_ae_checkpoint_is_refused_in_one_line_naming_the_right_stage(tiny_ae_checkpoint, tmp_path, capsys):
    out = tmp_path / "chair.obj"
    assert run("--checkpoint", tiny_ae_checkpoint, PHOTO, "-o", out) == 2
    captured = capsys.readouterr()
    (line,) = captured.err.strip().splitlines()
    assert line == (
        f"reconstruct.py: error: {tiny_ae_checkpoint} is an IM-AE checkpoint (train.py ae), whose image encoder "
        "was never trained; images need an IM-SVR checkpoint (train.py svr)"
    )
    assert not out.exists()


def test_empty_field_warns_and_writes_nothing(tmp_path, capsys):
    config = ModelConfig(code_dim=8, decoder_widths=(16, 8), voxel_channels=(2, 2, 2, 2))
    model = IMNet(config)
    with torch.no_grad():
        model.decoder.layers[-1].code.bias.fill_(-50.0)  # sigmoid(-50): nothing is inside
    checkpoint = tmp_path / "empty.pt"
    save_checkpoint(checkpoint, {"stage": "svr", "model_config": config_to_dict(config), "config": {}, "model": model.state_dict()})
    out = tmp_path / "out.obj"
    with pytest.warns(UserWarning, match="mesh is empty") as caught:
        assert run("--checkpoint", checkpoint, PHOTO, "-o", out, "--resolution", 32) == 1
    assert len(caught) == 1  # one warning for one empty field
    assert not out.exists()
    printed = capsys.readouterr()
    assert "0 meshes written" in printed.out and "no surface at level 0.5; nothing written" in printed.err


# ---------------------------------------------------------------------------------------------
# Bad output paths and inputs: one line, exit status, and nothing left behind


@pytest.fixture
def unwritable_dir(tmp_path):
    """A folder this process cannot write in: a read-only one, or (for root, whom permissions do
    not stop) /sys, which refuses even root."""
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        probe = folder / "probe"
        try:
            probe.touch()
        except PermissionError:
            yield folder
            return
        probe.unlink()
        try:
            Path("/sys/imnet-probe").mkdir()
        except OSError:
            yield Path("/sys")
            return
        Path("/sys/imnet-probe").rmdir()
        pytest.skip("no folder here refuses writes")
    finally:
        folder.chmod(0o755)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("reconstruct.py: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_an_unknown_output_extension_is_refused_not_made_a_folder(tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "x.xyz"
    assert run("--checkpoint", tiny_checkpoint, PHOTO, "-o", out) == 2
    assert ".xyz is not a mesh format this program writes (obj, ply, off, stl, glb)" in _one_error_line(capsys)
    both = tmp_path / "both.obj"
    assert run("--checkpoint", tiny_checkpoint, PHOTO, R2N2_VIEW, "-o", both) == 2
    assert "names one mesh file, but there are 2 inputs" in _one_error_line(capsys)
    assert not out.exists() and not both.exists()


@pytest.mark.parametrize("extra", [[], ["--save-input"]], ids=["mesh", "save-input"])
def test_an_unwritable_output_folder_is_one_line(tiny_checkpoint, unwritable_dir, capsys, extra):
    for out in (unwritable_dir / "chair.obj", unwritable_dir / "meshes"):
        assert run("--checkpoint", tiny_checkpoint, PHOTO, "-o", out, "--resolution", 16, *extra) == 2
        err = _one_error_line(capsys)
        assert str(unwritable_dir) in err and ("no permission" in err or "not permitted" in err or "denied" in err)
        assert not out.exists()


def test_an_output_below_a_regular_file_is_one_line(tiny_checkpoint, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    for out in (tmp_path / "file" / "chair.obj", tmp_path / "file" / "meshes"):
        assert run("--checkpoint", tiny_checkpoint, PHOTO, "-o", out) == 2
        assert f"cannot be created: {tmp_path / 'file'} is a file, not a folder" in _one_error_line(capsys)
    assert (tmp_path / "file").read_text() == ""


def test_a_disk_that_refuses_the_write_is_one_line(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    import imnet.mesh

    def full_disk(mesh, path, **options):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(imnet.mesh, "save_mesh", full_disk)
    out = tmp_path / "chair.obj"
    assert run("--checkpoint", tiny_checkpoint, PHOTO, "-o", out, "--resolution", 16) == 2
    assert _one_error_line(capsys) == f"reconstruct.py: error: {out}: No space left on device"
    assert not out.exists()


def test_huge_pictures_are_refused_from_their_header_like_in_the_app(tiny_checkpoint, tmp_path, capsys):
    import warnings

    from imnet.images import MAX_MEGAPIXELS

    folder = tmp_path / "huge"
    folder.mkdir()
    # 1-bit, so the files are small: only their headers are read. 144 MP is where Pillow warns, 200 MP
    # where it refuses to open; both get this program's own message.
    Image.new("1", (12000, 12000), 1).save(folder / "a.png")
    Image.new("1", (20000, 10000), 1).save(folder / "b.png")
    out = tmp_path / "meshes"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning from Pillow
        assert run("--checkpoint", tiny_checkpoint, folder, "-o", out) == 1
    err = capsys.readouterr().err
    assert MAX_MEGAPIXELS == 40  # the app's limit too (tests/test_app.py)
    assert "a: " in err and "12000x12000 is 144.0 megapixels, more than the 40 accepted" in err
    assert "b: " in err and "far larger than 40 megapixels" in err and "Traceback" not in err
    assert not out.exists()


def test_a_faint_object_needs_a_lower_background_tolerance(tiny_checkpoint, tmp_path, capsys):
    faint = np.full((200, 200, 3), 255, np.uint8)
    faint[60:140, 70:130] = 240  # differs from the white border by 0.06 per channel
    Image.fromarray(faint).save(tmp_path / "faint.png")
    out = tmp_path / "meshes"
    assert run("--checkpoint", tiny_checkpoint, tmp_path / "faint.png", "-o", out, "--resolution", 16) == 1
    err = capsys.readouterr().err
    assert "no object found" in err and "lower the tolerance" not in err  # no advice naming an option the app lacks
    assert not out.exists()  # no empty folder either
    assert run("--checkpoint", tiny_checkpoint, tmp_path / "faint.png", "-o", out, "--resolution", 16,
               "--background-tolerance", "0.03", "--save-input") == 0
    seen = np.asarray(Image.open(out / "faint_input.png"))
    assert seen.min() == 240 and seen[0, 0] == 255  # the object was found and kept
    assert run("--checkpoint", tiny_checkpoint, PHOTO, "--background-tolerance", "1.5") == 2
    assert "--background-tolerance must be in [0, 1)" in _one_error_line(capsys)

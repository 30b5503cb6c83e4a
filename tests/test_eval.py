"""eval: ground truth, scores, the retrieval baseline, the reports and the command line, on a tiny test
split of three closed shapes and one real (non-watertight) ShapeNet chair."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import trimesh

from eval import baseline, published
from eval.__main__ import main
from eval.run import ground_truth, mesh_file_stem, score_mesh
from imnet.checkpoint import load_model, save_checkpoint
from imnet.datafile import open_datafile, write_datafile
from imnet.images import crop_view
from imnet.render import render_views, sample_r2n2_cameras
from imnet.sampling import sample_points
from imnet.voxelize import voxelize_solid

DATA = Path(__file__).parent / "data"
REAL_CHAIR = "03001627/353bbd3b916426d24502f857a1cf320e"
REAL_CHAIR_MESH = DATA / "shapenet_v2_sample" / REAL_CHAIR / "models" / "model_normalized.obj"

# Closed shapes in object space; their source files are written scaled and moved, as ShapeNet's are.
CLOSED_SHAPES = {
    "03001627/box": lambda: trimesh.creation.box(extents=(0.5, 0.6, 0.4)),
    "03001627/cylinder": lambda: trimesh.creation.cylinder(radius=0.2, height=0.7),
    "02691156/sphere": lambda: trimesh.creation.icosphere(subdivisions=2, radius=0.35),
}
SOURCE_CENTRE, SOURCE_SCALE = np.array([0.3, -0.2, 1.0], np.float32), 2.5
FAST = ["--points", "5000", "--surface-points", "5000"]
COLUMNS = (
    "name,category,view,gt_kind,prediction,iou,chamfer_l1,chamfer_l2,normal_consistency,fscore@1%,fscore@2%,"
    "chamfer_imnet,accuracy,completeness,evaluations,seconds"
).split(",")
RETRIEVAL_COLUMNS = ["retrieved_name", "retrieval_distance", "retrieval_gt_kind"] + [
    f"retrieval_{key}" for key in COLUMNS[5:14]
]


def _record(name: str, mesh: trimesh.Trimesh, source: Path, centre, scale, rng, *, views: bool = True) -> dict:
    """What data_prep stores for a shape (voxels from a 64^3 voxelisation, to stay fast)."""
    solid64 = voxelize_solid(mesh, 64)
    solid256 = solid64.repeat(4, 0).repeat(4, 1).repeat(4, 2)
    record = {"voxels": solid64, **sample_points(solid256, rng), "centre": centre, "scale": scale,
              "source": str(source), "name": name}
    if views:
        cameras = sample_r2n2_cameras(24, rng)
        record.update(pixels=render_views(mesh, cameras), cameras=cameras)
    return record


@pytest.fixture(scope="module")
def split(tmp_path_factory) -> Path:
    """test.hdf5 with the three closed shapes and the real chair, and their source meshes."""
    folder = tmp_path_factory.mktemp("split")
    rng = np.random.default_rng(0)
    records = []
    for name, make in CLOSED_SHAPES.items():
        source = folder / f"{name.replace('/', '_')}.obj"
        make().apply_scale(SOURCE_SCALE).apply_translation(SOURCE_CENTRE).export(source)
        records.append(_record(name, make(), source, SOURCE_CENTRE, SOURCE_SCALE, rng))
    chair = trimesh.load(REAL_CHAIR_MESH, force="mesh", process=False, skip_materials=True)
    low, high = chair.bounds
    centre, scale = (low + high) / 2, float(np.linalg.norm(high - low))
    normalised = chair.copy().apply_translation(-centre).apply_scale(1 / scale)
    records.append(_record(REAL_CHAIR, normalised, REAL_CHAIR_MESH, centre, scale, rng))
    return write_datafile(folder / "test.hdf5", records, [*CLOSED_SHAPES, REAL_CHAIR])


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        return reader.fieldnames, list(reader)


def _assert_worst_case(scores: dict) -> None:
    assert float(scores["iou"]) == 0.0
    assert float(scores["chamfer_l1"]) == pytest.approx(math.sqrt(3))
    assert float(scores["chamfer_l2"]) == pytest.approx(3.0)
    assert float(scores["normal_consistency"]) == -1.0
    assert float(scores["fscore@1%"]) == float(scores["fscore@2%"]) == 0.0
    assert float(scores["chamfer_imnet"]) == pytest.approx(6.0)


# ---------------------------------------------------------------------------------------------
# Building blocks


def test_ground_truth_from_source_mesh_and_from_voxels(split, tmp_path):
    with open_datafile(split) as data:
        gt = ground_truth(data, 0)
        assert gt.kind == "source_mesh" and gt.occupancy.shape == (128, 128, 128)
        # The source file was scaled and moved; meta centre/scale bring it back to object space.
        np.testing.assert_allclose(gt.mesh.bounds, [[-0.25, -0.3, -0.2], [0.25, 0.3, 0.2]], atol=1e-5)
        assert abs(gt.occupancy.mean() - 0.5 * 0.6 * 0.4) < 0.01

        real = ground_truth(data, 3)  # the raw ShapeNet mesh is not watertight; its solid still is one
        assert real.kind == "source_mesh" and 0.001 < real.occupancy.mean() < 0.05

        voxels = ground_truth(data, 0, use="voxels")
        assert voxels.kind == "voxels64" and voxels.occupancy.shape == (64, 64, 64)
        assert np.abs(voxels.mesh.bounds).max() < 0.32

        data.meta["source"][1] = str(tmp_path / "moved_away.obj")
        assert ground_truth(data, 1).kind == "voxels64"
        with pytest.raises(ValueError, match="no usable source mesh.*--gt voxels"):
            ground_truth(data, 1, use="mesh")


def test_scores_of_perfect_and_empty_predictions(split):
    with open_datafile(split) as data:
        gt = ground_truth(data, 2)
    perfect = score_mesh(CLOSED_SHAPES["02691156/sphere"](), gt, iou_points=20_000, surface_points=20_000)
    assert perfect["iou"] > 0.97 and perfect["chamfer_l1"] < 0.01 and perfect["fscore@2%"] > 0.99
    assert perfect["normal_consistency"] > 0.95
    _assert_worst_case(score_mesh(trimesh.Trimesh(), gt, iou_points=1000, surface_points=1000))
    # The retrieval path: occupancy from a solid grid instead of an inside test.
    same = score_mesh(gt.mesh, gt, pred_occupancy=gt.occupancy, iou_points=1000, surface_points=1000)
    assert same["iou"] == 1.0


def test_pixel_features_and_nearest_shapes():
    images = np.full((2, 128, 128), 255, np.uint8)
    images[1, :4, :4] = 0  # one dark 4x4 block = one dark feature
    features = baseline.pixel_features(images)
    assert features.shape == (2, 1024) and features.dtype == np.float32
    assert features[0].min() == 1.0 and features[1, 0] == 0.0 and features[1, 1:].min() == 1.0
    with pytest.raises(ValueError, match="128, 128"):
        baseline.pixel_features(np.zeros((2, 137, 137), np.uint8))

    rng = np.random.default_rng(0)
    train = rng.uniform(size=(5, 3, 8))  # 5 shapes, 3 views each
    query = np.stack([train[3, 2], train[1, 0] + 0.01])
    chunks = [(0, train[:2]), (2, train[2:])]  # the row offsets of the chunks must be respected
    index, distance = baseline.nearest_shapes(query, chunks)
    assert index.tolist() == [3, 1]
    assert distance[0] == pytest.approx(0.0, abs=1e-6) and distance[1] == pytest.approx(0.01 * math.sqrt(8), rel=1e-4)


def test_encoder_features_retrieve_the_same_image(split, tiny_checkpoint):
    model, _ = load_model(tiny_checkpoint)
    with open_datafile(split) as data:
        crops = crop_view(np.asarray(data.pixels[:2, :6]))  # [2, 6, 128, 128]
    featurize = baseline.encoder_featurizer(model.eval())
    features = featurize(crops)
    assert features.shape == (2, 6, 512)
    index, _ = baseline.nearest_shapes(featurize(crops[:, 5]), [(0, features)])
    assert index.tolist() == [0, 1]


def test_published_numbers_are_the_papers():
    values = {(r.method, r.source, r.category, r.metric): r.value for r in published.PUBLISHED}
    assert values[("Occupancy Networks", published.ONET_UPDATED, "mean", "iou")] == 0.593
    assert values[("Occupancy Networks", published.ONET_UPDATED, "03001627", "chamfer_l1")] == 0.206
    assert values[("IM-NET", published.IMNET_IMPROVED, "mean", "chamfer_imnet")] == 1.524
    assert values[("IM-SVR", published.IMNET_ORIGINAL, "03001627", "chamfer_imnet")] == 2.209  # 0.002209 x1000
    chair = published.published_results(["03001627"])
    assert {r.category for r in chair} == {"03001627", "mean"}


# ---------------------------------------------------------------------------------------------
# The command line


def test_run_end_to_end_with_report_and_retrieval(split, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["run", "--checkpoint", str(tiny_checkpoint), "--data", str(split), "--train-data", str(split),
            "--out", str(out), "--resolution", "32", "--published", *FAST]
    assert main(argv) == 0
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("EvalConfig {")  # the config first, the one-line summary last
    line = printed.splitlines()[-1]
    assert line.startswith("evaluated 4 shapes: IoU") and "retrieval baseline: IoU 1.000" in line
    assert str(out / "summary.md") in line and str(out / "report.html") in line
    assert not [p for p in out.rglob(".*")]  # no temporary files left behind

    columns, rows = _read_csv(out / "per_shape.csv")
    assert columns == COLUMNS + RETRIEVAL_COLUMNS
    assert [r["name"] for r in rows] == [*CLOSED_SHAPES, REAL_CHAIR]
    assert {r["gt_kind"] for r in rows} == {"source_mesh"} and {r["prediction"] for r in rows} == {"ok"}
    assert all(int(r["evaluations"]) > 0 and float(r["seconds"]) > 0 for r in rows)
    assert all(0 <= float(r["iou"]) <= 1 for r in rows)
    # Test set == training set: retrieval finds each shape itself, so it scores perfectly: IoU 1 and
    # the Chamfer distances of a surface against itself (the sampling floor of 5000 points).
    with open_datafile(split) as data:
        for i, r in enumerate(rows):
            assert r["retrieved_name"] == r["name"] and float(r["retrieval_distance"]) < 1e-3
            gt = ground_truth(data, i)
            perfect = score_mesh(gt.mesh, gt, pred_occupancy=gt.occupancy, iou_points=5000, surface_points=5000)
            assert perfect["iou"] == float(r["retrieval_iou"]) == 1.0
            for key in ("chamfer_l1", "normal_consistency", "fscore@1%", "chamfer_imnet"):
                assert float(r[f"retrieval_{key}"]) == pytest.approx(perfect[key])
            assert perfect["chamfer_l1"] < 0.015 and perfect["normal_consistency"] > 0.9

    shapes_json = json.loads((out / "per_shape.json").read_text())
    assert [s["name"] for s in shapes_json] == [r["name"] for r in rows]
    assert shapes_json[0]["iou"] == pytest.approx(float(rows[0]["iou"]))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["shapes"] == 4 and summary["run"]["gt_kinds"] == {"source_mesh": 4}
    network = summary["methods"]["network"]
    assert {c: m["shapes"] for c, m in network["categories"].items()} == {"02691156": 1, "03001627": 3}
    assert network["shape_mean"]["iou"] == pytest.approx(np.mean([float(r["iou"]) for r in rows]))
    chair_mean = np.mean([float(r["iou"]) for r in rows if r["category"] == "03001627"])
    assert network["category_mean"]["iou"] == pytest.approx((chair_mean + float(rows[2]["iou"])) / 2)
    assert summary["methods"]["retrieval"]["shape_mean"]["iou"] == 1.0
    assert summary["network_better_fraction"]["iou"] == 0.0
    assert any(r["source"] == published.ONET_UPDATED for r in summary["published"]["results"])
    # The tiny checkpoint answers every picture with the same chair: identification names it.
    found = summary["run"]["identification"]
    assert found["network"]["pred_pred"] == 1.0 > found["network"]["gt_gt"]
    assert found["network"]["self_match"] <= 1 / 4
    assert found["retrieval"]["self_match"] == 1.0 and found["retrieval"]["pred_pred"] == pytest.approx(found["retrieval"]["gt_gt"])
    assert f"self-match {found['network']['self_match']:.2f}" in line

    markdown = (out / "summary.md").read_text()
    assert "CD-L1 ×10" in markdown and "CD IM-NET ×1000" in markdown and "4096 points" in markdown
    for category in ("chair (03001627)", "airplane (02691156)", "**category mean**", "**shape mean**"):
        assert re.search(rf"^\| {re.escape(category)} \| IM-NET \(this checkpoint\) \|", markdown, re.M)
        assert re.search(rf"^\| {re.escape(category)} \| retrieval baseline \| .* \| 1\.000 \|", markdown, re.M)
    assert "published, their data/protocol (docs/published.md)" in markdown
    assert re.search(r"^\| retrieval baseline \| 1\.000 \|", markdown, re.M)  # the identification table
    assert f"- [{published.ONET_UPDATED}] Mescheder et al." in markdown  # every table's source is cited
    assert "| chair (03001627) | published: Occupancy Networks [ONet, updated table] | 0.530 | 0.206 |" in markdown

    html = (out / "report.html").read_text()
    shape_table = html.split("<h2>Shapes</h2>")[1]
    assert shape_table.count("<tr>") == 1 + 4  # header + one row per shape
    images = re.findall(r'<img src="([^"]+)"', shape_table)
    assert len(images) == 4 * 4  # input, ground truth, prediction, retrieved
    assert all((out / image).is_file() for image in images)
    assert "<script>" in html and "http" not in html.split("<body>")[1]  # static: no CDN, no server


def test_run_on_given_meshes_perfect_missing_and_limit(split, tmp_path, capsys):
    meshes = tmp_path / "meshes"
    meshes.mkdir()
    for name, make in CLOSED_SHAPES.items():  # the real chair's mesh is left out: a missing prediction
        make().export(meshes / f"{mesh_file_stem(name, 0)}.obj")
    out = tmp_path / "out"
    argv = ["run", "--meshes", str(meshes), "--data", str(split), "--out", str(out), "--no-html",
            "--points", "20000", "--surface-points", "20000"]
    assert main(argv) == 0
    assert str(out / "summary.md") in capsys.readouterr().out and not (out / "report.html").exists()
    _, rows = _read_csv(out / "per_shape.csv")
    for r in rows[:3]:
        assert r["prediction"] == "ok" and r["evaluations"] == r["seconds"] == ""
        assert float(r["iou"]) > 0.97 and float(r["chamfer_l1"]) < 0.01 and float(r["fscore@2%"]) > 0.99
    assert rows[3]["prediction"] == "missing"
    _assert_worst_case(rows[3])
    assert "retrieved_name" not in rows[0]

    assert main(argv + ["--limit", "2", "--gt", "voxels"]) == 0
    _, rows = _read_csv(out / "per_shape.csv")
    assert [r["gt_kind"] for r in rows] == ["voxels64", "voxels64"]
    assert all(float(r["iou"]) > 0.9 for r in rows)


def test_metrics_command(tmp_path, capsys):
    pred, gt = tmp_path / "pred.obj", tmp_path / "gt.obj"
    trimesh.creation.box(extents=(0.4, 0.4, 0.4)).export(pred)
    trimesh.creation.box(extents=(0.5, 0.5, 0.5)).export(gt)
    assert main(["metrics", str(pred), str(gt), "--json", *FAST]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["iou"] == pytest.approx(0.4**3 / 0.5**3, abs=0.03)
    assert scores["chamfer_l1"] > 0.05 and scores["fscore@1%"] < 0.2
    assert main(["metrics", str(pred), str(gt), *FAST]) == 0
    assert "(CD-L1 ×10:" in capsys.readouterr().out


def _error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("eval: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_user_mistakes_give_one_line_and_exit_2(split, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    run = ["run", "--checkpoint", str(tiny_checkpoint), "--out", str(out), "--data"]
    assert "no such data file" in _error(run + [str(tmp_path / "nope.hdf5")], capsys)
    assert "give --checkpoint" in _error(["run", "--data", str(split), "--out", str(out)], capsys)
    assert "--view must be in 0..23" in _error(run + [str(split), "--view", "24"], capsys)

    voxels_only = write_datafile(tmp_path / "voxels_only.hdf5", [
        _record("03001627/box", CLOSED_SHAPES["03001627/box"](), tmp_path / "none.obj", SOURCE_CENTRE,
                SOURCE_SCALE, np.random.default_rng(0), views=False)
    ], ["03001627/box"])
    assert "holds no views" in _error(run + [str(voxels_only)], capsys)

    ae = tmp_path / "ae.pt"
    model, checkpoint = load_model(tiny_checkpoint)
    save_checkpoint(ae, {"stage": "ae", "model_config": checkpoint["model_config"], "config": {},
                         "model": model.state_dict()})
    assert "is an IM-AE checkpoint (train.py ae), whose image encoder was never trained; images need an IM-SVR " \
        "checkpoint (train.py svr)" in _error(["run", "--checkpoint", str(ae), "--out", str(out), "--data", str(split)], capsys)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    assert str(garbage) in _error(["run", "--checkpoint", str(garbage), "--out", str(out), "--data", str(split)], capsys)

    empty = tmp_path / "no_meshes"
    empty.mkdir()
    assert "holds none of the meshes expected, e.g. 03001627_box_view00.obj" in _error(
        ["run", "--meshes", str(empty), "--out", str(out), "--data", str(split)], capsys)
    assert "mesh file not found" in _error(["metrics", str(tmp_path / "a.obj"), str(tmp_path / "b.obj")], capsys)
    assert not out.exists()  # nothing half-written



def test_metrics_command_takes_the_ground_truths_axes(tmp_path, capsys):
    from imnet.mesh import from_shapenet_axes, load_mesh

    chair = load_mesh(REAL_CHAIR_MESH)
    pred, gt = tmp_path / "pred.obj", tmp_path / "gt.obj"
    trimesh.creation.box(extents=(0.3, 0.5, 0.2)).apply_translation([0.05, 0.0, -0.1]).export(pred)
    chair.export(tmp_path / "gt_v2.obj")
    from_shapenet_axes(chair.copy(), "+z", "-x").export(gt)  # the ground truth in z-up axes facing -x

    def scores(*argv):
        assert main(["metrics", str(pred), *argv, "--json", *FAST]) == 0
        return json.loads(capsys.readouterr().out)

    reference = scores(str(tmp_path / "gt_v2.obj"))
    assert scores(str(gt), "--up", "+z", "--front", "-x") == pytest.approx(reference, abs=1e-6)
    assert scores(str(gt))["chamfer_l1"] != pytest.approx(reference["chamfer_l1"], abs=1e-3)  # a turned ground truth


def test_published_md_lists_every_published_number_under_its_source():
    text = (Path(__file__).parents[1] / "docs" / "published.md").read_text()
    sections = {part.split("]**", 1)[0]: part for part in text.split("**[")[1:]}
    for result in published.PUBLISHED:
        assert result.source in sections, result.source
        assert f"| {result.value:.3f} |" in sections[result.source], result
    for source, citation in published.CITATIONS.items():
        assert citation.split(",")[0] in sections[source]  # the first author named where the numbers are


@pytest.mark.parametrize("content, message", [
    (b"this is a text file, not a mesh\n", "text.obj: mesh has no triangles"),
    (b"v 0 0 0\nv 1 0 nan\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\nf 1 3 4\nf 2 3 4\n", "text.obj has 1 vertices with NaN"),
    (bytes(range(256)) * 4, "text.obj: not a .obj mesh (the file holds binary data"),
], ids=["text", "nan-vertex", "binary"])
def test_metrics_of_an_unreadable_mesh_is_an_error_not_a_score(tmp_path, capsys, content, message):
    bad, gt = tmp_path / "text.obj", tmp_path / "gt.obj"
    bad.write_bytes(content)
    trimesh.creation.box(extents=(0.5, 0.5, 0.5)).export(gt)
    for argv in ([str(bad), str(gt)], [str(gt), str(bad)]):  # as prediction and as ground truth
        assert message in _error(["metrics", *argv, *FAST], capsys)
    assert capsys.readouterr().out == ""  # no scores printed


def test_run_refuses_bad_resolutions_and_outputs_before_any_work(split, tiny_checkpoint, tmp_path, capsys):
    run = ["run", "--checkpoint", str(tiny_checkpoint), "--data", str(split)]
    out = tmp_path / "out"
    assert "--resolution must be in 8..1024" in _error(run + ["--out", str(out), "--resolution", "100000"], capsys)
    (tmp_path / "file").write_text("")
    assert "is a file, not a folder" in _error(run + ["--out", str(tmp_path / "file" / "out")], capsys)
    assert "exists and is not a folder" in _error(run + ["--out", str(tmp_path / "file")], capsys)
    assert not out.exists() and (tmp_path / "file").read_text() == ""

"""Training: datasets, the IM-AE / codes / IM-SVR loops, resume, DDP, failure handling, the CLI.

The data are 8 generated sofas (data_prep.synthetic -> voxelize -> IM-NET sampling), with stand-in
views (silhouettes of the voxels) for IM-SVR. Models use reduced widths to stay fast on a CPU.
"""

import copy
import csv
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import load_train_cli
from torch.utils.data.distributed import DistributedSampler

import imnet.datasets
import imnet.training
from imnet.model import IMNet
from data_prep.synthetic import generate_shape
from imnet.checkpoint import CheckpointError, load_checkpoint, load_model
from imnet.config import AEConfig, ModelConfig, SVRConfig, config_to_dict
from imnet.calibration import CANDIDATE_LEVELS
from imnet.datafile import open_datafile, write_datafile
from imnet.datasets import AEDataset, SVRDataset, jitter_view, read_codes, stretch_shape
from imnet.runlog import preview_image
from imnet.runtime import Runtime
from imnet.sampling import downsample_voxels, lattice_occupancy, lattice_points, sample_points
from imnet.training import (
    SetupError,
    TrainingDiverged,
    calibrate_level,
    extract_codes,
    identification_loss,
    learning_rate,
    occupancy_loss,
    train_ae,
    train_svr,
)
from imnet.voxelize import voxelize_solid

ROOT = Path(__file__).resolve().parents[1]
TINY = ModelConfig(code_dim=16, decoder_widths=(32, 32, 16), voxel_channels=(2, 4, 8, 8))
N_SHAPES = 8


def stand_in_views(voxels: np.ndarray) -> np.ndarray:
    """24 grayscale 137x137 'views' of a shape: its silhouette along x, y, z, object dark on white."""
    views = []
    for view in range(24):
        silhouette = voxels.any(axis=view % 3).repeat(2, 0).repeat(2, 1)  # [128, 128]
        image = np.full((137, 137), 255, np.uint8)
        image[4:132, 4:132] = np.where(silhouette, 60 + 4 * view, 255)
        views.append(image)
    return np.stack(views)


@pytest.fixture(scope="module")
def shapes_file(tmp_path_factory) -> Path:
    """8 generated sofas in our HDF5 layout, with stand-in views."""
    records, names = [], []
    for i in range(N_SHAPES):
        # Voxelised at 128^3 and repeated to the 256^3 grid IM-NET samples from: 8x faster than 256^3.
        solid128 = voxelize_solid(generate_shape("sofa", seed=i), resolution=128)
        solid = solid128.repeat(2, 0).repeat(2, 1).repeat(2, 2)
        record = sample_points(solid, np.random.default_rng(i))
        record["voxels"] = downsample_voxels(solid, 64)
        record["occupancy_64"] = lattice_occupancy(solid, 64)
        record["pixels"] = stand_in_views(record["voxels"])
        records.append(record)
        names.append(f"04256520/synthetic_sofa_{i:04d}")
    return write_datafile(tmp_path_factory.mktemp("data") / "sofa.hdf5", records, names)


def ae_config(shapes_file, out_dir, **changes) -> AEConfig:
    config = AEConfig(
        data=str(shapes_file), val_data=str(shapes_file), out_dir=str(out_dir), model=TINY,
        levels=(16, 32), epochs=(2, 2), batch_shapes=4, points_per_shape=256, lr=1e-3,
        device="cpu", val_every=1, val_resolution=16, final_val_resolution=16, seed=3,
    )
    return dataclasses.replace(config, **changes)


def read_metrics(out_dir) -> list[dict]:
    with open(Path(out_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def state_dict(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


@pytest.fixture(scope="module")
def ae_run(shapes_file, tmp_path_factory) -> Path:
    """A finished tiny IM-AE run (2 levels x 2 epochs)."""
    out_dir = tmp_path_factory.mktemp("ae")
    train_ae(ae_config(shapes_file, out_dir))
    return out_dir


# ---------------------------------------------------------------------------------------------
# Datasets


def test_ae_dataset_serves_one_level_in_object_space(shapes_file):
    data = open_datafile(shapes_file)
    dataset = AEDataset(shapes_file, level=32)
    item = dataset[5]
    assert item["voxels"].shape == (1, 64, 64, 64) and item["voxels"].dtype == torch.float32
    np.testing.assert_array_equal(item["voxels"][0].numpy(), data.voxels[5])
    np.testing.assert_array_equal(item["points"].numpy(), data.points(32, 5))
    np.testing.assert_array_equal(item["values"].numpy(), data.values(32, 5))
    assert item["points"].shape == (4096, 3) and item["values"].shape == (4096,)
    assert item["points"].abs().max() < 0.5

    subset = AEDataset(shapes_file, level=64, points_per_shape=100)[2]
    assert subset["points"].shape == (100, 3) and subset["values"].shape == (100,)
    all_points = {tuple(p) for p in data.points(64, 2).tolist()}
    assert all(tuple(p) in all_points for p in subset["points"].tolist())
    with pytest.raises(ValueError, match="points_per_shape=5000"):
        AEDataset(shapes_file, level=32, points_per_shape=5000)


def test_ae_dataset_reads_the_imnet_2018_layout():
    dataset = AEDataset(Path(__file__).parent / "data" / "imnet_original_sample" / "samplechair_vox.hdf5", level=64)
    item = dataset[0]
    assert len(dataset) == 3 and item["points"].shape == (32768, 3)
    # 2018 points index the 64^3 grid itself: cell centres.
    np.testing.assert_allclose((item["points"].numpy() + 0.5) * 64 % 1, 0.5, atol=1e-5)
    # The points' occupancy agrees with the voxels at those cells.
    cells = ((item["points"].numpy() + 0.5) * 64).astype(int)
    occupied = item["voxels"][0].numpy()[cells[:, 0], cells[:, 1], cells[:, 2]]
    assert np.mean(occupied == item["values"].numpy()) > 0.99


def test_stretched_voxels_match_the_voxels_of_the_stretched_mesh():
    # The stored voxels' recipe (solid at 128^3, max-pooled to 64^3) applied to the mesh stretched
    # by the same factors is what stretch_shape should reproduce from the 64^3 voxels alone.
    mesh = generate_shape("chair", seed=4)
    voxels = downsample_voxels(voxelize_solid(mesh, resolution=128), 64)
    factors = np.array([0.8, 1.0, 1.2])
    stretched = mesh.copy()
    stretched.vertices = stretched.vertices * factors
    truth = downsample_voxels(voxelize_solid(stretched, resolution=128), 64)
    result, points = stretch_shape(voxels, np.array([[0.1, -0.2, 0.3]], np.float32), factors)
    assert result.dtype == bool and result.shape == (64, 64, 64)
    np.testing.assert_allclose(points, [[0.08, -0.2, 0.36]], rtol=1e-6)
    iou = (result & truth).sum() / (result | truth).sum()
    assert iou > 0.8, iou
    assert 0.9 < result.sum() / truth.sum() < 1.1  # neither fattened nor thinned
    # Unit factors change nothing; a thin plate survives a shrink across it.
    same, _ = stretch_shape(voxels, points, np.ones(3))
    np.testing.assert_array_equal(same, voxels.astype(bool))
    plate = np.zeros((64, 64, 64), bool)
    plate[31] = True
    assert stretch_shape(plate, points, [0.6, 1, 1])[0].any(axis=(1, 2)).sum() == 1
    # Doubling along x doubles a box's cells exactly; parts pushed out of the cube are cut off.
    box = np.zeros((64, 64, 64), bool)
    box[24:40, 10:20, 10:20] = True
    doubled = stretch_shape(box, points, [2, 1, 1])[0]
    assert doubled.sum() == 2 * box.sum() and np.flatnonzero(doubled.any(axis=(1, 2))).tolist() == list(range(16, 48))
    assert stretch_shape(box, points, [5, 1, 1])[0].any(axis=(1, 2)).all()
    # Shrinking leaves empty space where no part of the old cube lands.
    halved = stretch_shape(np.ones((64, 64, 64), bool), points, [1, 0.5, 1])[0]
    assert np.flatnonzero(halved.any(axis=(0, 2))).tolist() == list(range(16, 48)) and halved.sum() == 64 * 32 * 64
    with pytest.raises(ValueError, match="3 positive numbers"):
        stretch_shape(box, points, [1, 0, 1])


def test_ae_dataset_stretch_serves_new_shapes_with_consistent_points(shapes_file):
    data = open_datafile(shapes_file)
    plain = AEDataset(shapes_file, level=64)
    dataset = AEDataset(shapes_file, level=64, stretch=0.25)
    torch.manual_seed(0)
    first, second = dataset[1], dataset[1]
    assert not torch.equal(first["voxels"], second["voxels"])  # a new stretch every read
    np.testing.assert_array_equal(first["values"].numpy(), data.values(64, 1))
    for item in (first, second):
        # The stored points, each axis scaled by one factor (near 1: at most 1.25 before keeping the diagonal).
        stored_points = plain[1]["points"].numpy()
        for axis in range(3):
            away = np.abs(stored_points[:, axis]) > 0.05
            ratio = item["points"].numpy()[away, axis] / stored_points[away, axis]
            assert 0.7 < ratio[0] < 1.4 and np.allclose(ratio, ratio[0], rtol=1e-5)
        assert not np.allclose(item["points"].numpy(), stored_points)
        # The bounding-box diagonal stays that of the stored shape, to within a cell or two.
        occupied = item["voxels"][0].numpy() > 0
        spans = [np.ptp(np.flatnonzero(occupied.any(axis=other))) / 64 for other in ((1, 2), (0, 2), (0, 1))]
        stored = [np.ptp(np.flatnonzero(data.voxels[1].any(axis=other))) / 64 for other in ((1, 2), (0, 2), (0, 1))]
        assert abs(np.linalg.norm(spans) - np.linalg.norm(stored)) < 2.5 / 64
        # Points inside the stretched shape fall in its inside voxels (up to a cell at the surface).
        cells = np.clip(((item["points"].numpy() + 0.5) * 64).astype(int), 0, 63)
        agree = occupied[cells[:, 0], cells[:, 1], cells[:, 2]] == (item["values"].numpy() > 0.5)
        assert agree.mean() > 0.9
    with pytest.raises(ValueError, match="stretch must be in"):
        AEDataset(shapes_file, level=64, stretch=1.5)


def test_ae_trains_on_stretched_shapes_and_records_it(shapes_file, tmp_path, monkeypatch):
    factors = []  # every stretch the training loop's batches went through

    def spy(voxels, points, stretch_factors):
        factors.append(np.asarray(stretch_factors))
        return stretch_shape(voxels, points, stretch_factors)

    monkeypatch.setattr(imnet.datasets, "stretch_shape", spy)
    train_ae(ae_config(shapes_file, tmp_path / "plain", epochs=(1, 1)))
    assert factors == []  # off by default
    summary = train_ae(ae_config(shapes_file, tmp_path / "stretched", epochs=(1, 1), stretch=0.2))
    assert summary.epochs == 2 and np.isfinite(summary.train_loss)
    assert len(factors) == 2 * N_SHAPES  # each shape once per epoch
    # 1.2 at most per axis, times at most 1.2 again to keep the diagonal.
    assert all(np.all((f > 1 / 1.44) & (f < 1.44)) for f in factors) and not np.allclose(factors, 1)
    assert load_checkpoint(tmp_path / "stretched" / "last.pt")["config"]["stretch"] == 0.2
    with pytest.raises(SetupError, match="stretch must be in"):
        train_ae(ae_config(shapes_file, tmp_path / "bad", stretch=-0.1))


def test_svr_dataset_serves_cropped_views_and_codes(shapes_file):
    data = open_datafile(shapes_file)
    codes = np.arange(N_SHAPES * 4, dtype=np.float32).reshape(N_SHAPES, 4)
    item = SVRDataset(shapes_file, codes, view=7)[3]
    assert item["image"].shape == (1, 128, 128) and item["view"] == 7
    np.testing.assert_allclose(item["image"][0].numpy() * 255, data.pixels[3, 7, 4:132, 4:132], atol=1e-4)
    np.testing.assert_array_equal(item["code"].numpy(), codes[3])

    torch.manual_seed(0)
    random_views = {SVRDataset(shapes_file, codes)[0]["view"] for _ in range(40)}
    assert len(random_views) > 10  # a random view each time the item is read
    with pytest.raises(ValueError, match="view must be in 0..23"):
        SVRDataset(shapes_file, codes, view=24)


def test_svr_dataset_flip_serves_the_mirrored_rendering_half_of_the_time(shapes_file):
    data = open_datafile(shapes_file)
    dataset = SVRDataset(shapes_file, view=5, flip=True)
    plain = data.pixels[2, 5, 4:132, 4:132]
    mirrored = data.pixels[2, 5, :, ::-1][4:132, 4:132]  # mirrored about the 137x137 centre, then the crop
    torch.manual_seed(0)
    seen = []
    for _ in range(40):
        image = dataset[2]["image"][0].numpy() * 255
        if np.allclose(image, plain, atol=1e-4):
            seen.append("plain")
        else:
            np.testing.assert_allclose(image, mirrored, atol=1e-4)
            seen.append("mirrored")
    assert 8 < seen.count("mirrored") < 32
    assert all(np.allclose(SVRDataset(shapes_file, view=5)[2]["image"][0].numpy() * 255, plain, atol=1e-4) for _ in range(5))


def test_view_jitter_keeps_the_background_white_and_the_object(shapes_file):
    torch.manual_seed(0)
    image = SVRDataset(shapes_file, view=0)[1]["image"]
    for _ in range(5):
        jittered = jitter_view(image)
        assert jittered.shape == image.shape
        assert jittered[0, :, :2].min() == 1 and jittered[0, :2, :].min() == 1  # borders stay white
        dark = (jittered < 0.5).float().mean() / (image < 0.5).float().mean()
        assert 0.75 < dark < 1.3  # the object is still there, about as big
        assert not torch.equal(jittered, image)


def test_datasets_split_across_processes_with_a_distributed_sampler(shapes_file):
    dataset = AEDataset(shapes_file, level=16)
    shares = [list(DistributedSampler(dataset, num_replicas=2, rank=r, shuffle=True, seed=0)) for r in (0, 1)]
    assert sorted(shares[0] + shares[1]) == list(range(N_SHAPES))


def test_preview_images_show_truth_beside_prediction():
    truth = np.zeros((16, 16, 16), bool)
    truth[:8] = True  # x < 0 half
    image = preview_image([(truth, np.zeros((16, 16, 16), bool))])
    assert image.shape == (1, 16, 32)
    assert image[0, :, :8].min() > 0 and image[0, :, 8:].max() == 0  # truth: left half seen; prediction empty


def test_validation_lattice_is_exact_where_max_pooled_voxels_are_not(shapes_file):
    """The lattice labels are the 256^3 solid itself; the max-pooled voxels are dilated."""
    data = open_datafile(shapes_file)
    solid = voxelize_solid(generate_shape("sofa", seed=0), resolution=128).repeat(2, 0).repeat(2, 1).repeat(2, 2)
    np.testing.assert_array_equal(data.occupancy_64[0], solid[2::4, 2::4, 2::4])
    assert data.occupancy_64[0].sum() < data.voxels[0].sum()  # max-pooling only ever adds
    points = lattice_points(64)
    np.testing.assert_allclose(points[3, 5, 7], (np.array([3, 5, 7]) * 4 + 2.5) / 256 - 0.5)


def test_recipe_pieces():
    logits = torch.tensor([[-20.0, 0.0, 20.0]])
    target = torch.tensor([[0.0, 1.0, 1.0]])
    assert occupancy_loss(logits, target, "bce").item() == pytest.approx(np.log(2) / 3, rel=1e-4)
    assert occupancy_loss(logits, target, "mse").item() == pytest.approx(0.25 / 3, rel=1e-4)
    with pytest.raises(ValueError, match="bce"):
        occupancy_loss(logits, target, "l1")
    # Points right beyond the margin get exactly no gradient (never a denormal one); the value is kept.
    logits = torch.tensor([[-150.0, -150.0, 150.0, 3.0, -41.0]], requires_grad=True)
    target = torch.tensor([[0.0, 1.0, 1.0, 0.0, 0.0]])
    for kind in ("bce", "mse"):
        loss = occupancy_loss(logits, target, kind)
        plain = (F.binary_cross_entropy_with_logits if kind == "bce" else lambda x, t: F.mse_loss(torch.sigmoid(x), t))
        assert loss.item() == pytest.approx(plain(logits.detach(), target).item(), rel=1e-6)
        (gradient,) = torch.autograd.grad(loss, logits)
        assert gradient[0, 0] == 0 and gradient[0, 2] == 0 and gradient[0, 4] == 0
        assert gradient[0, 1] < -0.01 or kind == "mse"  # confidently wrong: BCE still pulls hard
        assert gradient[0, 3] > 0.01
    rates = [learning_rate(step / 100, 1e-3, warmup=0.1) for step in range(100)]
    assert rates[0] == pytest.approx(1e-5) and rates[1] == pytest.approx(1e-4) and rates[9] == pytest.approx(9e-4)  # linear warm-up
    assert rates[10] == pytest.approx(1e-3)
    assert max(rates) == pytest.approx(1e-3) and rates[-1] == pytest.approx(5e-5, rel=0.01)  # cosine to 5%
    assert all(a >= b for a, b in zip(rates[10:], rates[11:]))
    assert learning_rate(0.5, 1e-3, schedule="constant") == 1e-3


def test_identification_loss_rewards_a_code_nearer_its_own_shape_than_any_other():
    n, d = 8, 16
    bank = torch.eye(n, d) * d**0.5  # standardised codes all at the same distance from the mean code 0
    index = torch.arange(n)
    assert identification_loss(bank.clone(), bank, index, temperature=0.01).item() < 1e-6  # perfect
    mean = torch.zeros(n, d, requires_grad=True)  # a mean-shape predictor cannot tell the shapes apart
    loss = identification_loss(mean, bank, index, temperature=0.1)
    assert loss.item() == pytest.approx(np.log(n), rel=1e-6)
    (gradient,) = torch.autograd.grad(loss, mean)
    assert ((-gradient) * (bank - mean.detach())).sum(1).gt(0).all()  # descent moves each towards its own code
    # Nearer its own code than to another's: lower loss; the loss reads distances, not the batch order.
    between = 0.7 * bank + 0.3 * bank.roll(1, 0)
    assert identification_loss(between, bank, index).item() < identification_loss(bank.roll(1, 0), bank, index).item()
    assert identification_loss(between[[2, 0]], bank, index[[2, 0]]).item() == pytest.approx(
        (identification_loss(between[[2]], bank, index[[2]]).item() + identification_loss(between[[0]], bank, index[[0]]).item()) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        identification_loss(bank, bank, index, temperature=0.0)


def test_the_fused_optimizer_makes_the_same_updates_as_plain_adam():
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.LeakyReLU(0.02), torch.nn.Linear(7, 1))
    fused = copy.deepcopy(reference)
    optimizers = [torch.optim.Adam(reference.parameters(), lr=1e-2, betas=(0.5, 0.999)),
                  imnet.training._adam(list(fused.parameters()), 1e-2, 0.5, torch.device("cpu"))]
    assert optimizers[1].param_groups[0]["fused"] and optimizers[1].param_groups[0]["betas"] == (0.5, 0.999)
    for _ in range(20):
        x = torch.randn(16, 5)
        for net, optimizer in zip((reference, fused), optimizers):
            optimizer.zero_grad()
            net(x).square().mean().backward()
            optimizer.step()
    for a, b in zip(reference.parameters(), fused.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# IM-AE


@pytest.fixture
def one_thread():
    """Small CPU ops run fastest, and reproducibly, on one thread (and the test machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_ae_overfits_8_generated_shapes(shapes_file, tmp_path, one_thread):
    """The whole IM-AE loop learns: IoU >= 0.7 on the exact 32^3 lattice of the shapes it was trained on.

    With the default Fourier point features this small decoder memorises detail in 150 epochs (0.76
    measured; point scale 8 without them plateaus near 0.64 here); an untrained or broken loop
    scores about 0."""
    config = AEConfig(
        data=str(shapes_file), val_data=str(shapes_file), out_dir=str(tmp_path),
        model=ModelConfig(code_dim=32, decoder_widths=(128, 64, 32), voxel_channels=(2, 4, 8, 16), voxel_norm="none"),
        levels=(16, 32), epochs=(20, 130), batch_shapes=4, points_per_shape=512, lr=3e-3,
        device="cpu", val_every=50, val_resolution=32, final_val_resolution=0, checkpoint_every=1000,
    )
    summary = train_ae(config)
    assert summary.best_iou >= 0.7, summary
    rows = read_metrics(tmp_path)
    assert len(rows) == 150 and max(float(r["val_iou"] or 0) for r in rows) == pytest.approx(summary.best_iou, abs=1e-6)
    assert float(rows[-1]["train_loss"]) < 0.5 * float(rows[20]["train_loss"])  # level 32 was learnt

    # Recomputed independently from best.pt: the field at the exact validation lattice (32^3 of it).
    model, _ = load_model(tmp_path / "best.pt")
    data = open_datafile(shapes_file)
    voxels = torch.from_numpy(data.voxels[:]).float()
    points = torch.from_numpy(lattice_points(64)[::2, ::2, ::2].reshape(-1, 3))
    with torch.no_grad():
        codes = model.voxel_encoder.eval()(voxels[:, None])
        predicted = model.decoder(codes, points.expand(N_SHAPES, -1, -1)).reshape(N_SHAPES, 32, 32, 32) > 0.5
    truth = torch.from_numpy(data.occupancy_64[:][:, ::2, ::2, ::2].astype(bool))
    iou = ((predicted & truth).sum((1, 2, 3)) / (predicted | truth).sum((1, 2, 3))).mean()
    assert iou.item() == pytest.approx(summary.best_iou, abs=1e-4)


def test_checkpoints_hold_everything_and_load_safely(ae_run):
    checkpoint = torch.load(ae_run / "last.pt", weights_only=True)  # nothing but tensors and plain values
    assert checkpoint["stage"] == "ae"
    progress = checkpoint["progress"]
    assert progress == {"epoch": 4, "step": 8, "level_index": 1, "level_epoch": 2,
                        "best_iou": pytest.approx(progress["best_iou"]), "seconds": pytest.approx(progress["seconds"])}
    assert progress["seconds"] > 0
    assert checkpoint["config"]["model"] == config_to_dict(TINY)
    assert set(checkpoint["rng"][0]) >= {"python", "numpy", "torch"}
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == pytest.approx(learning_rate(7 / 8, 1e-3, 0.05))
    model, _ = load_model(ae_run / "best.pt", expected=TINY)
    assert load_checkpoint(ae_run / "best.pt")["progress"]["best_iou"] == checkpoint["progress"]["best_iou"]

    rows = read_metrics(ae_run)
    assert [(r["epoch"], r["level"], r["step"]) for r in rows] == [("1", "16", "2"), ("2", "16", "4"), ("3", "32", "6"), ("4", "32", "8")]
    assert all(0 <= float(r["val_iou"]) <= 1 and float(r["train_loss"]) > 0 for r in rows)
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(ae_run / "tensorboard"))


def test_resume_continues_exactly_like_an_uninterrupted_run(shapes_file, ae_run, tmp_path):
    config = ae_config(shapes_file, tmp_path)
    first = train_ae(config, stop_after_epochs=1)  # in the middle of level 16
    assert first.stopped_early
    assert load_checkpoint(tmp_path / "last.pt")["progress"]["level_epoch"] == 1
    train_ae(config, resume=True, stop_after_epochs=1)  # at the end of level 16
    progress = load_checkpoint(tmp_path / "last.pt")["progress"]
    assert (progress["epoch"], progress["level_index"], progress["level_epoch"]) == (2, 0, 2)
    final = train_ae(config, resume=True)  # on to level 32
    assert not final.stopped_early and final.epochs == 4

    interrupted, uninterrupted = read_metrics(tmp_path), read_metrics(ae_run)
    for key in ("epoch", "level", "step", "train_loss", "val_loss", "val_iou"):
        assert [r[key] for r in interrupted] == [r[key] for r in uninterrupted], key
    resumed_weights, straight_weights = state_dict(tmp_path / "last.pt"), state_dict(ae_run / "last.pt")
    for name, tensor in straight_weights.items():
        assert torch.equal(resumed_weights[name], tensor), name


def test_a_finished_run_is_not_overwritten_and_resume_needs_a_run(shapes_file, ae_run, tmp_path):
    with pytest.raises(SetupError, match="already holds a run"):
        train_ae(ae_config(shapes_file, ae_run))
    with pytest.raises(SetupError, match="nothing to resume"):
        train_ae(ae_config(shapes_file, tmp_path), resume=True)


def test_resume_with_another_architecture_names_the_difference(shapes_file, ae_run, tmp_path):
    import shutil

    shutil.copy(ae_run / "last.pt", tmp_path / "last.pt")
    other = dataclasses.replace(TINY, decoder_widths=(64, 32, 16))
    with pytest.raises(CheckpointError, match="decoder_widths: checkpoint"):
        train_ae(ae_config(shapes_file, tmp_path, model=other), resume=True)


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(shapes_file, tmp_path, monkeypatch):
    calls = []

    def loss_that_explodes(logits, target, kind):
        calls.append(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        return loss * float("nan") if len(calls) > 2 else loss  # epoch 1 has 2 steps

    monkeypatch.setattr(imnet.training, "occupancy_loss", loss_that_explodes)
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 2, step 3.*last good checkpoint"):
        train_ae(ae_config(shapes_file, tmp_path, levels=(16,), epochs=(3,)))
    checkpoint = load_checkpoint(tmp_path / "last.pt")
    assert checkpoint["progress"]["epoch"] == 1
    assert all(torch.isfinite(t).all() for t in checkpoint["model"].values() if t.is_floating_point())
    assert len(read_metrics(tmp_path)) == 1


def test_ddp_with_two_cpu_processes_matches_one_process_with_twice_the_batch(shapes_file, tmp_path, one_thread):
    common = ["--data", str(shapes_file), "--epochs", "16:1,32:1", "--device", "cpu", "--points-per-shape", "0",
              "--code-dim", "16", "--decoder-widths", "32,32,16", "--voxel-channels", "2,4,8,8",
              "--voxel-norm", "instance", "--lr", "1e-3", "--seed", "5", "--precision", "fp32"]
    # fp32 forced: "auto" measures the CPU per process, and on a CPU with bf16 instructions one
    # thread may measure bf16 fast where two did not (a CI failure: bf16 losses beside fp32 ones).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
         str(ROOT / "train.py"), "ae", *common, "--batch-shapes", "2", "--out-dir", str(tmp_path / "ddp")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parameters identical in all 2 processes" in result.stdout  # every rank checked the same weights

    # Instance norm and all points: 2 processes x 2 shapes see exactly what 1 process x 4 shapes sees.
    # One thread here as in each process there: with two, some CPUs' kernels sum in another order.
    assert load_train_cli().main(["ae", *common, "--batch-shapes", "4", "--out-dir", str(tmp_path / "single")]) == 0
    ddp, single = read_metrics(tmp_path / "ddp"), read_metrics(tmp_path / "single")
    np.testing.assert_allclose([float(r["train_loss"]) for r in ddp], [float(r["train_loss"]) for r in single], rtol=1e-5)
    assert [r["step"] for r in ddp] == ["2", "4"]  # 8 shapes / (2 processes x 2 shapes) per epoch
    ddp_weights, single_weights = state_dict(tmp_path / "ddp" / "last.pt"), state_dict(tmp_path / "single" / "last.pt")
    for name, tensor in single_weights.items():
        torch.testing.assert_close(ddp_weights[name], tensor, rtol=0, atol=5e-5, msg=lambda m: f"{name}: {m}")


def test_clock_takes_the_processes_mean_time_under_ddp(monkeypatch):
    class TwoProcesses:
        world_size = 2
        device = torch.device("cpu")

        def mean(self, value):  # as if the other process had spent 30 s more
            return (value + (value + 30.0)) / 2

    monkeypatch.setattr(imnet.training.time, "perf_counter", FakeTime(0.0))
    clock = imnet.training.Clock(imnet.training.Progress(seconds=45.0), total_steps=10, minutes=2.0, runtime=TwoProcesses())
    assert clock.fraction() == pytest.approx(60.0 / 120.0)  # its own 45 s, the mean 60 s, of 120
    assert clock.agreed_seconds() == pytest.approx(60.0)  # what a checkpoint stores: the same in every process
    untimed = imnet.training.Clock(imnet.training.Progress(step=4), total_steps=10, minutes=0.0, runtime=TwoProcesses())
    assert untimed.fraction() == pytest.approx(0.4) and untimed.left() == ""


def test_ddp_with_a_time_budget_ends_together_in_every_process(shapes_file, tmp_path):
    """Processes that disagreed on the time would take different numbers of steps and hang in an
    all-reduce; they agree on the mean time, so the run ends, with identical weights."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
         str(ROOT / "train.py"), "ae", "--data", str(shapes_file), "--epochs", "16:1,32:1", "--minutes", "0.1",
         "--device", "cpu", "--code-dim", "16", "--decoder-widths", "32,32,16", "--voxel-channels", "2,4,8,8",
         "--batch-shapes", "2", "--out-dir", str(tmp_path / "ddp")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parameters identical in all 2 processes" in result.stdout
    rows = read_metrics(tmp_path / "ddp")
    assert {r["level"] for r in rows} == {"16", "32"} and load_checkpoint(tmp_path / "ddp" / "last.pt")["progress"]["seconds"] >= 6.0


# ---------------------------------------------------------------------------------------------
# Codes and IM-SVR


def test_codes_then_svr_trains_the_image_encoder_against_a_frozen_decoder(shapes_file, ae_run, tmp_path):
    codes_path = extract_codes(ae_run / "last.pt", shapes_file, tmp_path / "codes.npz", val_data=shapes_file, device="cpu")
    with np.load(codes_path) as npz:
        assert npz["train_codes"].shape == (N_SHAPES, 16) and npz["val_codes"].shape == (N_SHAPES, 16)
        assert list(npz["train_names"]) == open_datafile(shapes_file).names
    ae_model, _ = load_model(ae_run / "last.pt")
    with torch.no_grad():
        expected = ae_model.voxel_encoder.eval()(torch.from_numpy(open_datafile(shapes_file).voxels[:]).float()[:, None])
    np.testing.assert_allclose(read_codes(codes_path, "train", shapes_file), expected.numpy(), atol=1e-6)

    config = SVRConfig(
        data=str(shapes_file), val_data=str(shapes_file), ae_checkpoint=str(ae_run / "last.pt"),
        codes=str(codes_path), out_dir=str(tmp_path / "svr"), epochs=1, batch_shapes=4, lr=1e-3,
        device="cpu", val_resolution=16,
    )
    summary = train_svr(config)
    assert summary.epochs == 1 and summary.best_iou is not None
    rows = read_metrics(tmp_path / "svr")
    assert [r["step"] for r in rows] == ["2"] and rows[0]["val_loss"] and rows[0]["val_iou"]

    svr_model, checkpoint = load_model(tmp_path / "svr" / "last.pt", expected=TINY)
    assert checkpoint["stage"] == "svr"
    for name, tensor in ae_model.decoder.state_dict().items():  # frozen, and kept: the SVR checkpoint alone reconstructs
        assert torch.equal(svr_model.decoder.state_dict()[name], tensor), name
    assert not torch.equal(svr_model.image_encoder.net.conv1.weight, ae_model.image_encoder.net.conv1.weight)


def test_svr_image_size_rebuilds_the_untrained_image_encoder_and_is_saved(shapes_file, ae_run, tmp_path):
    codes_path = extract_codes(ae_run / "last.pt", shapes_file, tmp_path / "codes.npz", device="cpu")
    config = SVRConfig(data=str(shapes_file), ae_checkpoint=str(ae_run / "last.pt"), codes=str(codes_path),
                       out_dir=str(tmp_path / "svr"), epochs=1, batch_shapes=4, device="cpu", image_size=96)
    train_svr(config)
    model, checkpoint = load_model(tmp_path / "svr" / "last.pt")
    assert checkpoint["model_config"]["image_size"] == 96 and model.image_encoder.image_size == 96
    ae_model, _ = load_model(ae_run / "last.pt")
    for name, tensor in ae_model.decoder.state_dict().items():  # the AE's decoder, untouched by the rebuild
        assert torch.equal(model.decoder.state_dict()[name], tensor), name
    with pytest.raises(SetupError, match="--image-size: image_size must be in 32..128"):
        train_svr(dataclasses.replace(config, out_dir=str(tmp_path / "bad"), image_size=8))

    # A checkpoint from before image_size existed ran its ResNet at 128.
    old = load_checkpoint(tmp_path / "svr" / "last.pt")
    del old["model_config"]["image_size"]
    torch.save(old, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt")[0].image_encoder.image_size == 128


def test_cli_svr_image_size_and_minutes_reach_the_config():
    cli = load_train_cli()
    args = cli.build_parser().parse_args(["svr", "--image-size", "96", "--minutes", "2.5"])
    config = cli.make_config(SVRConfig, args)
    assert (config.image_size, config.minutes) == (96, 2.5)
    ae = cli.make_config(AEConfig, cli.build_parser().parse_args(["ae", "--minutes", "1", "--point-octaves", "2"]))
    assert (ae.minutes, ae.model.point_octaves) == (1.0, 2)


def test_svr_identification_loss_is_trained_with_and_refused_when_negative(shapes_file, ae_run, tmp_path, capsys):
    codes_path = extract_codes(ae_run / "last.pt", shapes_file, tmp_path / "codes.npz", device="cpu")
    runs = {}
    for weight in (0.0, 1.0):
        config = SVRConfig(data=str(shapes_file), ae_checkpoint=str(ae_run / "last.pt"), codes=str(codes_path),
                           out_dir=str(tmp_path / f"svr{weight}"), epochs=1, batch_shapes=4, device="cpu",
                           precision="fp32", match_weight=weight)
        runs[weight] = train_svr(config)
    # The same seed and views: only the added term can make the losses differ (it is positive).
    assert runs[1.0].train_loss > runs[0.0].train_loss
    saved = load_checkpoint(tmp_path / "svr1.0" / "last.pt")["config"]
    assert (saved["match_weight"], saved["match_temperature"]) == (1.0, 0.1)
    cli = load_train_cli()
    code = cli.main(["svr", "--data", str(shapes_file), "--ae-checkpoint", str(ae_run / "last.pt"), "--codes", str(codes_path),
                     "--out-dir", str(tmp_path / "bad"), "--match-weight", "-1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "--match-weight must be 0" in err
    assert not (tmp_path / "bad").exists()


def test_svr_refuses_codes_of_another_data_file(shapes_file, ae_run, tmp_path):
    codes = tmp_path / "codes.npz"
    np.savez(codes, train_codes=np.zeros((3, 16), np.float32), train_names=np.array(["a", "b", "c"]))
    config = SVRConfig(data=str(shapes_file), ae_checkpoint=str(ae_run / "last.pt"), codes=str(codes),
                       out_dir=str(tmp_path / "svr"), device="cpu")
    with pytest.raises(SetupError, match="extracted from another data file"):
        train_svr(config)


def test_svr_pretrained_weights_must_exist(shapes_file, ae_run, tmp_path):
    codes = extract_codes(ae_run / "last.pt", shapes_file, tmp_path / "codes.npz", device="cpu")
    config = SVRConfig(data=str(shapes_file), ae_checkpoint=str(ae_run / "last.pt"), codes=str(codes),
                       pretrained_image_encoder=str(tmp_path / "resnet18.pth"), out_dir=str(tmp_path / "svr"), device="cpu")
    with pytest.raises(SetupError, match="resnet18.pth"):
        train_svr(config)


# ---------------------------------------------------------------------------------------------
# Command line


def test_cli_codes_writes_train_and_val_codes(shapes_file, ae_run, tmp_path, capsys):
    out = tmp_path / "codes.npz"
    code = load_train_cli().main(["codes", "--checkpoint", str(ae_run / "best.pt"), "--data", str(shapes_file),
                                  "--val-data", str(shapes_file), "--out", str(out), "--device", "cpu"])
    assert code == 0 and capsys.readouterr().out.strip() == f"codes: wrote {out}"
    with np.load(out) as npz:
        np.testing.assert_array_equal(npz["train_codes"], npz["val_codes"])  # the same file twice
        assert str(npz["checkpoint"]) == str(ae_run / "best.pt")


def test_cli_missing_data_file_is_one_line_and_exit_code_2(tmp_path, capsys):
    code = load_train_cli().main(["ae", "--data", str(tmp_path / "missing.h5"), "--out-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "missing.h5" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # the run folder is made for the run, and it never started


def test_cli_runs_refused_at_setup_leave_no_folder_behind(shapes_file, ae_run, tmp_path, capsys):
    cli = load_train_cli()

    def refused(argv: list[str]) -> str:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        return err

    import shutil

    import h5py

    # A data file with 2-column points (issue 13), found wrong after the run folder was locked: the
    # message names the dataset, and the folders made for the run go again...
    tampered = shutil.copy(shapes_file, tmp_path / "tampered.hdf5")
    with h5py.File(tampered, "a") as f:
        del f["points_16"]
        f.create_dataset("points_16", data=np.zeros((N_SHAPES, 4096, 2), np.uint8))
    err = refused(["ae", "--data", str(tampered), "--out-dir", str(tmp_path / "runs" / "a" / "ae")])
    assert "cannot read the training data" in err and "'points_16' has shape [8, 4096, 2], expected [N, P, 3]" in err
    assert not (tmp_path / "runs").exists()
    # A point scale the default Fourier encoding would silently ignore.
    err = refused(["ae", "--data", str(shapes_file), "--point-scale", "8", "--out-dir", str(tmp_path / "runs" / "s")])
    assert "applies to raw coordinates only" in err and "--point-octaves 0" in err
    assert not (tmp_path / "runs").exists()
    bad = tmp_path / "bad.hdf5"
    bad.write_bytes(b"not an HDF5 file")
    codes = tmp_path / "codes.npz"
    assert cli.main(["codes", "--checkpoint", str(ae_run / "best.pt"), "--data", str(shapes_file), "--out", str(codes)]) == 0
    assert f"{bad} is not a codes file" in refused(["svr", "--data", str(shapes_file), "--ae-checkpoint", str(ae_run / "best.pt"),
                               "--codes", str(bad), "--out-dir", str(tmp_path / "svr")])
    assert not (tmp_path / "svr").exists()
    # ... a folder that was there before stays.
    (tmp_path / "kept").mkdir()
    refused(["ae", "--data", str(bad), "--out-dir", str(tmp_path / "kept")])
    assert (tmp_path / "kept").is_dir() and not {"metrics.csv", "last.pt"} & {p.name for p in (tmp_path / "kept").iterdir()}
    # Outputs below a regular file: one line before any work.
    (tmp_path / "file").write_text("")
    err = refused(["ae", "--data", str(shapes_file), "--out-dir", str(tmp_path / "file" / "run")])
    assert f"--out-dir {tmp_path / 'file' / 'run'} cannot be created: {tmp_path / 'file'} is a file, not a folder" in err
    err = refused(["codes", "--checkpoint", str(ae_run / "best.pt"), "--data", str(shapes_file),
                   "--out", str(tmp_path / "file" / "codes.npz")])
    assert f"cannot be created: {tmp_path / 'file'} is a file, not a folder" in err
    assert (tmp_path / "file").read_text() == ""


def test_cli_wrong_checkpoint_is_one_line_and_exit_code_2(shapes_file, ae_run, tmp_path, capsys):
    cli = load_train_cli()
    code = cli.main(["svr", "--data", str(shapes_file), "--ae-checkpoint", str(shapes_file), "--codes", "x.npz",
                     "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "sofa.hdf5" in err

    code = cli.main(["ae", "--resume", "--out-dir", str(ae_run), "--voxel-channels", "4,4,8,8"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "voxel_channels" in err


def test_cli_resume_takes_the_saved_config_and_extends_training(shapes_file, ae_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(ae_run, run)
    code = load_train_cli().main(["ae", "--resume", "--out-dir", str(run), "--epochs", "16:2,32:3"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.strip().splitlines()[-1].startswith("ae: 5 epochs")  # the one-line summary
    rows = read_metrics(run)
    assert [r["level"] for r in rows] == ["16", "16", "32", "32", "32"]
    assert load_checkpoint(run / "last.pt")["config"]["points_per_shape"] == 256  # from the saved run


def test_svr_dataset_keeps_held_out_views_out_of_training(tmp_path):
    from imnet.datafile import write_datafile
    from imnet.datasets import SVRDataset

    rng = np.random.default_rng(0)
    record = {
        "voxels": np.zeros((64, 64, 64), np.uint8),
        "pixels": rng.integers(0, 255, (24, 137, 137), dtype=np.uint8),
        **{f"points_{l}": np.zeros((n, 3), np.uint8) for l, n in ((16, 4096), (32, 4096), (64, 16384))},
        **{f"values_{l}": np.zeros((n, 1), np.uint8) for l, n in ((16, 4096), (32, 4096), (64, 16384))},
    }
    path = write_datafile(tmp_path / "d.hdf5", [record], ["c/a"])
    torch.manual_seed(0)
    dataset = SVRDataset(path, train_views=20)
    assert {dataset[0]["view"] for _ in range(300)} == set(range(20))
    with pytest.raises(ValueError, match="train_views"):
        SVRDataset(path, train_views=25)


def test_bf16_and_fp32_training_steps_agree(shapes_file):
    """The precision policy's bf16 autocast computes the same step as fp32, to bf16's rounding."""
    from imnet.precision import autocast

    torch.manual_seed(0)
    model = IMNet(TINY)
    batch = next(iter(torch.utils.data.DataLoader(AEDataset(shapes_file, 32, points_per_shape=512), batch_size=4)))
    results = {}
    for precision in ("fp32", "bf16"):
        model.zero_grad()
        with autocast("cpu", precision):
            loss = occupancy_loss(model(batch["voxels"], batch["points"]), batch["values"])
        loss.backward()
        results[precision] = (loss.item(), torch.cat([p.grad.flatten() for p in model.decoder.parameters()]))
    (loss32, grad32), (loss16, grad16) = results["fp32"], results["bf16"]
    assert loss16 == pytest.approx(loss32, rel=0.02)
    assert torch.nn.functional.cosine_similarity(grad32, grad16, dim=0) > 0.99


def test_a_second_run_on_the_same_folder_is_refused_with_the_holder(shapes_file, tmp_path):
    from imnet.runtime import lock_run_folder

    holder = lock_run_folder(tmp_path)
    try:
        with pytest.raises(SetupError, match=rf"{tmp_path} is in use by another training run \(pid {os.getpid()}"):
            train_ae(ae_config(shapes_file, tmp_path))
        assert not (tmp_path / "metrics.csv").exists() and not (tmp_path / "last.pt").exists()
    finally:
        holder.close()
    train_ae(ae_config(shapes_file, tmp_path, levels=(16,), epochs=(1,)))  # free again once the holder is gone


class FakeTime:
    """perf_counter for imnet.training that advances `tick` seconds per call: a time budget without waiting."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_a_time_budget_spends_it_across_the_levels_in_their_shares(shapes_file, tmp_path, monkeypatch):
    """--minutes: the levels get the shares of the time that the epochs give them, the learning rate
    follows the time to its end, and the run stops when the budget is spent."""
    monkeypatch.setattr(imnet.training.time, "perf_counter", FakeTime(0.5))
    config = ae_config(shapes_file, tmp_path, epochs=(1, 3), minutes=1.0, val_every=1000)  # 15 s of level 16, then 45 s
    summary = train_ae(config)
    rows = read_metrics(tmp_path)
    levels = [int(r["level"]) for r in rows]
    assert levels == sorted(levels) and set(levels) == {16, 32}  # coarse to fine, both levels
    assert summary.epochs == len(rows) > sum(config.epochs)  # more epochs than given: the budget decided
    progress = load_checkpoint(tmp_path / "last.pt")["progress"]
    assert 60.0 <= progress["seconds"] <= 70.0  # spent, and stopped within a step or two of the end
    steps_16 = max(int(r["step"]) for r in rows if r["level"] == "16")
    assert steps_16 == pytest.approx(progress["step"] / 4, abs=2)  # level 16 had a quarter of the time
    assert float(rows[-1]["lr"]) == pytest.approx(0.05 * config.lr, rel=0.05)  # the cosine reached its end


def test_a_time_budgeted_svr_run_stops_when_it_is_spent_and_resumes_the_clock(shapes_file, ae_run, tmp_path, monkeypatch):
    codes_path = extract_codes(ae_run / "last.pt", shapes_file, tmp_path / "codes.npz", val_data=shapes_file, device="cpu")
    monkeypatch.setattr(imnet.training.time, "perf_counter", FakeTime(1.0))
    config = SVRConfig(data=str(shapes_file), val_data=str(shapes_file), ae_checkpoint=str(ae_run / "last.pt"),
                       codes=str(codes_path), out_dir=str(tmp_path / "svr"), epochs=1, minutes=0.5, batch_shapes=4,
                       device="cpu", val_resolution=16, val_every=1000)
    first = train_svr(config, stop_after_epochs=1)
    spent = load_checkpoint(tmp_path / "svr" / "last.pt")["progress"]["seconds"]
    assert first.stopped_early and 0 < spent < 30
    final = train_svr(config, resume=True)
    progress = load_checkpoint(tmp_path / "svr" / "last.pt")["progress"]
    assert final.epochs > 1 and 30.0 <= progress["seconds"] <= 40.0
    assert final.best_iou is not None  # the last epoch validated


@pytest.mark.parametrize("option, message", [
    (["--epochs", "16:-1"], "at least 1 epoch"),
    (["--minutes", "-1"], "--minutes must be 0"),
    (["--lr", "nan"], "--lr must be a positive number"),
    (["--lr", "0"], "--lr must be a positive number"),
])
def test_cli_bad_numbers_are_one_line_and_exit_code_2(shapes_file, tmp_path, capsys, option, message):
    code = load_train_cli().main(["ae", "--data", str(shapes_file), "--out-dir", str(tmp_path / "run"), *option])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing created before the options were checked


def test_divergence_before_the_first_checkpoint_says_there_is_none(shapes_file, tmp_path, monkeypatch):
    monkeypatch.setattr(imnet.training, "occupancy_loss", lambda logits, target, kind: logits.mean() * float("nan"))
    with pytest.raises(TrainingDiverged, match="No checkpoint was written yet") as error:
        train_ae(ae_config(shapes_file, tmp_path, levels=(16,), epochs=(1,)))
    assert "last.pt" not in str(error.value) and not (tmp_path / "last.pt").exists()


def test_the_iso_level_is_calibrated_on_training_shapes_and_kept_in_checkpoints(shapes_file, ae_run, tmp_path):
    """The end of IM-AE training measures the level (imnet.calibration) of the final weights and of
    best.pt's (an earlier epoch here), writes each into its checkpoint's decoder and reports the
    final one; IM-SVR inherits it with the decoder."""
    diagnostics = json.loads((ae_run / "diagnostics.json").read_text())
    level, table = diagnostics["iso_level"], diagnostics["calibration"]
    assert level in CANDIDATE_LEVELS and table["levels"] == list(CANDIDATE_LEVELS)
    assert dict(zip(table["levels"], table["boundary_chamfer"]))[level] == min(table["boundary_chamfer"])
    runtime = Runtime.start("cpu", "fp32")
    try:
        for name in ("last.pt", "best.pt"):  # recomputed from the weights: the same choice
            model, _ = load_model(ae_run / name)
            stored = model.decoder.iso_level
            model.decoder.level.fill_(0.5)
            assert calibrate_level(model, open_datafile(shapes_file), runtime, 16)[0] == stored
            if name == "last.pt":
                assert stored == level
    finally:
        runtime.stop()

    codes = extract_codes(ae_run / "best.pt", shapes_file, tmp_path / "codes.npz", device="cpu")
    svr = train_svr(SVRConfig(data=str(shapes_file), ae_checkpoint=str(ae_run / "best.pt"), codes=str(codes),
                              out_dir=str(tmp_path / "svr"), epochs=1, device="cpu"))
    model, _ = load_model(svr.out_dir / "last.pt", stage="svr")
    assert model.decoder.iso_level == stored


def test_without_the_exact_lattice_the_level_stays_one_half_and_the_run_says_why(shapes_file, tmp_path, capsys):
    """IM-NET's published files have no occupancy_64: nothing to calibrate on."""
    data = open_datafile(shapes_file)
    records = [{"voxels": data.voxels[i], **{f"{kind}_{level}": data.point_indices(level, i) if kind == "points"
                                            else data.values(level, i).astype(np.uint8)
                                            for level in (16, 32, 64) for kind in ("points", "values")}}
               for i in range(2)]
    bare = write_datafile(tmp_path / "bare.hdf5", records, ["a/1", "a/2"])
    assert open_datafile(bare).occupancy_64 is None
    config = ae_config(bare, tmp_path / "run", val_data="", epochs=(1, 1))
    train_ae(config)
    assert "iso-level stays 0.5" in capsys.readouterr().out
    assert load_model(tmp_path / "run" / "last.pt")[0].decoder.iso_level == 0.5

"""Checkpoints: atomic writes, safe loading, architecture checks."""

import os
import pickle

import pytest
import torch

from imnet.checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from imnet.config import AEConfig, ModelConfig, config_to_dict
from imnet.model import IMNet

SMALL = ModelConfig(code_dim=32, decoder_widths=(64, 64, 32), voxel_channels=(8, 8, 16, 16))


def write_model_checkpoint(path, config=SMALL):
    torch.manual_seed(0)
    model = IMNet(config)
    save_checkpoint(path, {
        "stage": "ae",
        "model_config": config_to_dict(config),
        "config": config_to_dict(AEConfig(model=config)),
        "model": model.state_dict(),
        "progress": {"epoch": 3, "step": 12},
    })
    return model


def test_round_trip_restores_weights_and_plain_values(tmp_path):
    path = tmp_path / "run" / "last.pt"
    model = write_model_checkpoint(path)
    loaded, checkpoint = load_model(path, expected=SMALL)
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert checkpoint["progress"] == {"epoch": 3, "step": 12}
    assert checkpoint["config"]["model"]["decoder_widths"] == [64, 64, 32]
    assert loaded.config == SMALL
    assert os.listdir(path.parent) == ["last.pt"]  # no temporary file left behind


def test_the_decoders_iso_level_travels_with_the_weights_and_older_files_read_one_half(tmp_path):
    model = write_model_checkpoint(tmp_path / "old.pt")
    assert model.decoder.iso_level == 0.5
    state = {k: v for k, v in model.state_dict().items() if k != "decoder.level"}  # written before the level existed
    save_checkpoint(tmp_path / "old.pt", {"stage": "ae", "model_config": config_to_dict(SMALL), "model": state})
    assert load_model(tmp_path / "old.pt")[0].decoder.iso_level == 0.5
    model.decoder.level.fill_(0.65)
    save_checkpoint(tmp_path / "new.pt", {"stage": "ae", "model_config": config_to_dict(SMALL), "model": model.state_dict()})
    assert load_model(tmp_path / "new.pt")[0].decoder.iso_level == 0.65


def test_failed_write_leaves_the_previous_checkpoint_intact(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"stage": "ae", "progress": {"epoch": 1}})
    with pytest.raises(Exception):
        save_checkpoint(path, {"stage": "ae", "unpicklable": lambda: None})
    assert load_checkpoint(path)["progress"] == {"epoch": 1}
    assert os.listdir(tmp_path) == ["last.pt"]


def test_another_architecture_is_rejected_naming_the_differing_fields(tmp_path):
    path = tmp_path / "last.pt"
    write_model_checkpoint(path)
    expected = ModelConfig(code_dim=32, decoder_widths=(128, 64, 32), voxel_channels=(8, 8, 16, 16), voxel_norm="instance")
    with pytest.raises(CheckpointError, match="another architecture") as error:
        load_model(path, expected=expected)
    message = str(error.value)
    assert "decoder_widths" in message and "voxel_norm" in message
    assert "code_dim" not in message  # only the fields that differ


def test_weights_that_contradict_the_model_config_are_rejected(tmp_path):
    path = tmp_path / "last.pt"
    model = IMNet(SMALL)
    save_checkpoint(path, {"model_config": config_to_dict(ModelConfig(code_dim=16, decoder_widths=(64, 64, 32),
                                                                      voxel_channels=(8, 8, 16, 16))),
                           "model": model.state_dict()})
    with pytest.raises(CheckpointError, match="do not match its model_config"):
        load_model(path)


class Payload:
    """What an attacker would put in a checkpoint: unpickling it runs a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_tampered_file_is_rejected_without_running_its_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "last.pt"
    torch.save({"format": "imnet-checkpoint", "version": 1, "model": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="tampered"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="tampered"):
        load_model(path)
    assert not marker.exists()


def test_plain_pickle_and_garbage_are_rejected(tmp_path):
    pickled = tmp_path / "pickled.pt"
    pickled.write_bytes(pickle.dumps({"format": "imnet-checkpoint", "version": 1}, protocol=2))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    for path in (pickled, garbage):  # torch.load reads only its own container format
        with pytest.raises(CheckpointError, match=path.name):
            load_checkpoint(path)


def test_foreign_torch_files_and_missing_files_are_rejected(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(IMNet(SMALL).decoder.state_dict(), path)
    with pytest.raises(CheckpointError, match="not an imnet checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_stage_is_checked_and_the_message_names_the_right_one(tmp_path):
    path = tmp_path / "ae.pt"
    write_model_checkpoint(path)  # stage "ae"
    model, _ = load_model(path, stage="ae")
    assert model.config == SMALL
    with pytest.raises(CheckpointError) as error:
        load_model(path, stage="svr")
    message = str(error.value)
    assert message == (
        f"{path} is an IM-AE checkpoint (train.py ae), whose image encoder was never trained; "
        "images need an IM-SVR checkpoint (train.py svr)"
    )
    svr = tmp_path / "svr.pt"
    save_checkpoint(svr, {"stage": "svr", "model_config": config_to_dict(SMALL), "model": IMNet(SMALL).state_dict()})
    with pytest.raises(CheckpointError, match=r"is an IM-SVR checkpoint \(train.py svr\); shape codes from voxels "
                       r"need an IM-AE checkpoint \(train.py ae\)"):
        load_model(svr, stage="ae")
    assert load_model(svr)[1]["stage"] == "svr"  # stage=None takes either
    with pytest.raises(ValueError, match="stage must be one of"):
        load_model(svr, stage="SVR")


def test_a_failed_atomic_write_names_the_output_and_leaves_nothing(tmp_path):
    from imnet.atomic import atomic_path

    out = tmp_path / "out.bin"
    with pytest.raises(OSError) as error:
        with atomic_path(out) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(28, "No space left on device", str(tmp))  # what a full disk raises mid-write
    assert error.value.filename == str(out)  # the output the user named, not a hidden temporary name
    assert not list(tmp_path.iterdir())

"""imnet.speed and `train.py speed`: the measured training steps per second that `make demo` sizes its data by."""

import pytest
from conftest import load_train_cli

from imnet.config import AEConfig, ModelConfig, SVRConfig
from imnet.speed import TrainingSpeed, training_speed

TINY = ModelConfig(code_dim=16, decoder_widths=(32, 32, 16), voxel_channels=(2, 4, 8, 8))


def test_training_speed_times_both_stages_with_their_batches():
    speed = training_speed(TINY, ae=AEConfig(batch_shapes=2, points_per_shape=256), svr=SVRConfig(batch_shapes=4, image_size=32),
                           device="cpu", precision="fp32", seconds=0.05, warmup_steps=1)
    assert isinstance(speed, TrainingSpeed)
    assert speed.ae_steps_per_second > 0 and speed.svr_steps_per_second > 0
    assert (speed.device, speed.precision) == ("cpu", "fp32")
    assert speed.ae_batch == "2 shapes x 256 points" and speed.svr_batch == "4 views at 32x32"
    line = str(speed)
    assert line.startswith(f"ae_steps_per_second={speed.ae_steps_per_second:.2f} svr_steps_per_second=")
    assert "device=cpu precision=fp32" in line and "\n" not in line


def test_training_speed_rejects_bad_settings():
    with pytest.raises(ValueError, match="seconds must be > 0"):
        training_speed(TINY, device="cpu", seconds=0)
    with pytest.raises(ValueError, match="precision must be one of"):
        training_speed(TINY, device="cpu", precision="fp16")


def test_cli_speed_prints_one_parseable_line_and_bad_input_is_one_line(capsys):
    cli = load_train_cli()
    args = ["speed", "--device", "cpu", "--precision", "fp32", "--seconds", "0.05", "--image-size", "32",
            "--code-dim", "16", "--decoder-widths", "32,32,16", "--voxel-channels", "2,4,8,8"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    fields = dict(item.split("=") for item in out[0].split(" (")[0].split())
    assert float(fields["ae_steps_per_second"]) > 0 and float(fields["svr_steps_per_second"]) > 0
    assert fields["device"] == "cpu" and fields["precision"] == "fp32"
    assert "16 views at 32x32" in out[0]  # the demo's IM-SVR batch at the asked input size

    assert cli.main(["speed", "--seconds", "-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "seconds must be > 0" in err
    assert cli.main(["speed", "--device", "cpu", "--voxel-norm", "none", "--code-activation", "sigmoid", "--seconds", "0.01",
                     "--code-dim", "8", "--decoder-widths", "16", "--voxel-channels", "2,2,2,2", "--image-size", "20"]) == 2
    assert "image_size must be in 32..128" in capsys.readouterr().err

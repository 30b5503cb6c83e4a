"""The one precision policy of training and inference (imnet.precision)."""

import pytest
import torch

from imnet.precision import autocast, resolve_device, resolve_precision


def test_forced_precisions_are_kept_and_auto_picks_one_of_them():
    assert resolve_precision("cpu", "fp32") == "fp32"
    assert resolve_precision("cpu", "bf16") == "bf16"
    assert resolve_precision(torch.device("cpu"), "auto") in ("bf16", "fp32")
    assert resolve_precision("mps", "auto") == "fp32"
    with pytest.raises(ValueError, match="auto, bf16, fp32"):
        resolve_precision("cpu", "fp16")


def test_autocast_is_a_no_op_in_fp32_and_lowers_matmuls_in_bf16():
    a = torch.randn(4, 4)
    with autocast("cpu", "fp32"):
        assert (a @ a).dtype == torch.float32
    with autocast("cpu", "bf16"):
        assert (a @ a).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        with autocast("cpu", "auto"):
            pass


def test_unknown_or_missing_devices_say_what_to_use():
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="use auto, cpu, cuda, cuda:N or mps"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="use --device cpu"):
            resolve_device("cuda")

"""bench/bf16_emulated.py: its fp32 emulation of bf16 autocast computes what autocast computes.

The bench's claim (bf16 training learns as well as fp32, measured on a CPU without fast bf16) holds
only if the emulation rounds where CPU autocast rounds; checked here on the decoder and the voxel
encoder, forward and backward, against torch.autocast itself on small inputs.
"""

import importlib.util
from pathlib import Path

import pytest
import torch

from imnet.model import Decoder, VoxelEncoder

spec = importlib.util.spec_from_file_location("bf16_emulated", Path(__file__).parents[1] / "bench" / "bf16_emulated.py")
bf16_emulated = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bf16_emulated)


def output_and_grads(net, forward, monkeypatch, mode):
    """forward() and the gradients of mean(out^2) over net's parameters; mode: fp32, autocast or emulated."""
    net.zero_grad()
    with monkeypatch.context() as m:
        if mode == "emulated":
            bf16_emulated.install(m.setattr)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "autocast"):
            out = forward().float()
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in net.named_parameters()}


def test_emulation_rounds_like_cpu_autocast(monkeypatch):
    torch.manual_seed(0)
    decoder = Decoder(code_dim=16, widths=(64, 32, 16), point_octaves=2)
    encoder = VoxelEncoder(code_dim=16, channels=(4, 8), norm="none")  # 16^3 -> 8^3 -> 4^3 -> code
    codes, points = torch.randn(2, 16), torch.rand(2, 200, 3) - 0.5
    voxels = (torch.rand(2, 1, 16, 16, 16) > 0.5).float()
    # The logits (what the training loss sees) and the codes. Kernels on other CPUs sum in other
    # orders, which moves the odd bf16 rounding, so the checks are on the share of equal values,
    # over all of a network's gradients together (a 4-value bias gives shares of 0, 0.25, ...).
    # Here the decoder matches bit for bit; the voxel encoder's gradients 77% (25-100% per tensor:
    # oneDNN's bf16 convolution backward sums in another order; without the emulation's rounding of
    # gradients 0.1%); fp32 matches nothing in either.
    for net, forward, grads_equal in ((decoder, lambda: decoder.logits(codes, points), 0.9),
                                      (encoder, lambda: encoder(voxels), 0.3)):
        out_fp32, grads_fp32 = output_and_grads(net, forward, monkeypatch, "fp32")
        out_autocast, grads_autocast = output_and_grads(net, forward, monkeypatch, "autocast")
        out_emulated, grads_emulated = output_and_grads(net, forward, monkeypatch, "emulated")
        assert equal_share(out_fp32, out_autocast) < 0.1
        assert equal_share(out_emulated, out_autocast) >= 0.9
        every = lambda grads: torch.cat([grad.flatten() for grad in grads.values()])
        assert equal_share(every(grads_emulated), every(grads_autocast)) >= grads_equal
        for name, grad in grads_autocast.items():
            assert equal_share(grads_fp32[name], grad) < 0.1, name
            torch.testing.assert_close(grads_emulated[name], grad, rtol=0, atol=1e-2 * grad.abs().max().item(),
                                       msg=lambda m: f"{name}: {m}")


def equal_share(a, b):
    return (a == b).float().mean().item()


def test_emulation_refuses_other_precisions():
    with pytest.raises(SystemExit, match="emulation runs in float32"):
        bf16_emulated.train_emulated(["ae", "--precision", "bf16"])

"""The IM-NET networks: an implicit field decoder and the two encoders that produce its shape code.

    VoxelEncoder   [B, 1, 64, 64, 64]  -> [B, 128]      (IM-AE)
    ImageEncoder   [B, 1, 128, 128]    -> [B, 128]      (IM-SVR, torchvision ResNet-18)
    Decoder        [B, 128], [B, N, 3] -> [B, N]        occupancy in [0, 1] (`logits`: before the sigmoid)

`IMNet` bundles the three so that one checkpoint holds a whole model.

Choices that differ from the 2019 paper by default, each kept because it measured better at equal
CPU time (docs/training.md has the ablations): the shape code is linear rather than a sigmoid
(sigmoid codes saturate, and a saturated dimension carries neither gradient nor information); the
decoder sees Fourier features of the query point (`PointEncoding`, 4 octaves: legs reach the floor
and surfaces are closer at equal CPU time than with raw or scaled coordinates, at the price of
looser range bounds, see imnet.bounds); no normalisation in the voxel encoder at the small batches
that train fastest; the ResNet works at 64x64. `ModelConfig.paper()` is the paper's architecture.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from imnet.config import ModelConfig

__all__ = ["LEAKY_SLOPE", "CODE_ACTIVATIONS", "VoxelEncoder", "ImageEncoder", "MatmulConv2d", "PointEncoding", "SkipLinear", "Decoder", "IMNet"]

LEAKY_SLOPE = 0.02  # the paper's LeakyReLU slope, used in every network
CODE_ACTIVATIONS = {"sigmoid": torch.sigmoid, "none": lambda z: z}
CODE_BOUNDS = {"sigmoid": (0.0, 1.0), "none": None}  # range of each activation, for code diagnostics


class VoxelEncoder(nn.Module):
    """3D CNN of IM-AE: four strided 4^3 convolutions, then a valid 4^3 convolution to the code.

    [B, 1, 64, 64, 64] -> [B, code_dim]. `code_activation` "sigmoid" (the paper: codes in (0, 1)) or
    "none" (linear codes). `norm` after each strided convolution: "batch" (paper), "instance"
    (IM-NET's later release) or "none".
    """

    def __init__(
        self,
        code_dim: int = 128,
        channels: tuple[int, ...] = (32, 64, 128, 256),
        norm: str = "batch",
        code_activation: str = "none",
    ):
        super().__init__()
        if norm not in ("batch", "instance", "none"):
            raise ValueError(f"norm must be 'batch', 'instance' or 'none', got {norm!r}")
        if code_activation not in CODE_ACTIVATIONS:
            raise ValueError(f"code_activation must be one of {sorted(CODE_ACTIVATIONS)}, got {code_activation!r}")
        layers: list[nn.Module] = []
        c_in = 1
        for c_out in channels:  # 64 -> 32 -> 16 -> 8 -> 4 with the default four layers
            layers.append(nn.Conv3d(c_in, c_out, 4, stride=2, padding=1, bias=norm == "none"))
            if norm == "batch":
                layers.append(nn.BatchNorm3d(c_out))
            elif norm == "instance":
                layers.append(nn.InstanceNorm3d(c_out, affine=True))
            layers.append(nn.LeakyReLU(LEAKY_SLOPE))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv3d(c_in, code_dim, 4, stride=1, padding=0)
        self.code_activation = code_activation
        self._init_weights()

    def _init_weights(self) -> None:
        # Kaiming normal over the fan-in with the LeakyReLU's gain (He et al., ICCV 2015), the code
        # layer with gain 1, zero biases: each layer keeps the scale of its input, so the codes of
        # different shapes differ from the first step (spread over shapes ~0.07-0.14, about that of
        # a trained encoder). Without normalisation layers nothing else sets that scale: PyTorch's
        # default init shrinks it ~3x per layer, to codes that differ by 0.001, which the decoder
        # learns to ignore; some runs then lost their codes altogether for several epochs
        # (docs/training.md A8).
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                gain = "linear" if m is self.head else "leaky_relu"
                nn.init.kaiming_normal_(m.weight, a=LEAKY_SLOPE, mode="fan_in", nonlinearity=gain)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm3d, nn.InstanceNorm3d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, voxels: torch.Tensor) -> torch.Tensor:
        return CODE_ACTIVATIONS[self.code_activation](self.head(self.features(voxels)).flatten(1))


class MatmulConv2d(nn.Conv2d):
    """An `nn.Conv2d` computed as unfold + matmul (im2col): the same weights, the same results.

    For ResNet-18's last stage when the ResNet works at 64x64, where that stage's maps are 2x2:
    there oneDNN's weight gradient of a 512-channel 3x3 convolution took 38 ms on 2 CPU cores, most
    of an IM-SVR step; as a matmul it is [512, B * 4] @ [B * 4, 4608], well under a millisecond. An
    IM-SVR step (16 views) went from 251-276 to 177-200 ms. At 128x128 (4x4 maps) oneDNN was
    faster (504 against 547-568 ms), so `ImageEncoder` swaps it in only up to 64x64. The state
    dict keys are nn.Conv2d's, so checkpoints and torchvision's ImageNet weights load unchanged.

    [B, C, H, W] -> [B, out_channels, H', W'] (channels-last strides).
    """

    @classmethod
    def from_conv(cls, conv: nn.Conv2d) -> "MatmulConv2d":
        """The same convolution, sharing `conv`'s parameters."""
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("MatmulConv2d covers ungrouped convolutions with numeric zero padding")
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                  bias=conv.bias is not None, device=conv.weight.device, dtype=conv.weight.dtype)
        new.weight, new.bias = conv.weight, conv.bias
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        size = [(n + 2 * p - d * (k - 1) - 1) // s + 1
                for n, p, d, k, s in zip((h, w), self.padding, self.dilation, self.kernel_size, self.stride)]
        columns = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # [B, C*k*k, H'*W']
        out = F.linear(columns.transpose(1, 2), self.weight.flatten(1), self.bias)  # [B, H'*W', out]
        return out.reshape(b, *size, self.out_channels).permute(0, 3, 1, 2)


class ImageEncoder(nn.Module):
    """torchvision's ResNet-18 on one grayscale channel, with a code-sized head.

    [B, 1, 128, 128] (pixels / 255, object dark on white) -> [B, code_dim], with the same
    `code_activation` as the AE codes it regresses. The ResNet works at `image_size`: a larger
    input is first area-averaged down to it (the paper: 128, the input itself; our default 64,
    which trains twice as many steps per CPU minute and measured better at equal time, see
    docs/training.md). torchvision initialises the ResNet (Kaiming convolutions, unit batch norm).
    """

    def __init__(self, code_dim: int = 128, code_activation: str = "none", image_size: int = 128):
        super().__init__()
        if code_activation not in CODE_ACTIVATIONS:
            raise ValueError(f"code_activation must be one of {sorted(CODE_ACTIVATIONS)}, got {code_activation!r}")
        if not 32 <= image_size <= 128:
            raise ValueError(f"image_size must be in 32..128 (the ResNet's input side), got {image_size}")
        self.net = torchvision.models.resnet18(weights=None, num_classes=code_dim)
        self.net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(self.net.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision's
        for block in self.net.layer4 if image_size <= 64 else ():  # 2x2 maps: convolutions as matmuls
            block.conv1, block.conv2 = MatmulConv2d.from_conv(block.conv1), MatmulConv2d.from_conv(block.conv2)
            if block.downsample is not None:
                block.downsample[0] = MatmulConv2d.from_conv(block.downsample[0])
        self.code_activation = code_activation
        self.image_size = image_size
        # Linear codes are regressed standardised: code = code_mean + code_scale * net(image).
        self.register_buffer("code_mean", torch.zeros(code_dim))
        self.register_buffer("code_scale", torch.ones(code_dim))

    @torch.no_grad()
    def set_code_statistics(self, codes: torch.Tensor) -> None:
        """Per-dimension mean and spread of the AE codes to regress ([N, code_dim]), so that the
        network's raw outputs are standardised codes and every dimension weighs alike."""
        if self.code_activation == "none":
            self.code_mean.copy_(codes.mean(0))
            self.code_scale.copy_(codes.std(0).clamp(min=1e-3))

    def load_imagenet_state(self, state: dict[str, torch.Tensor], source: str = "the state dict") -> None:
        """Initialise from torchvision's ResNet-18 ImageNet weights (read them with
        `imnet.checkpoint.load_weights_file`, from a LOCAL file: nothing is downloaded).

        The RGB first convolution is summed over its colour channels (a gray image is R = G = B);
        the ImageNet classifier is dropped.
        """
        state = {k.removeprefix("net."): v for k, v in state.items() if not k.removeprefix("net.").startswith("fc.")}
        if "conv1.weight" in state and state["conv1.weight"].shape[1] == 3:
            state["conv1.weight"] = state["conv1.weight"].sum(dim=1, keepdim=True)
        try:
            missing, unexpected = self.net.load_state_dict(state, strict=False)
        except RuntimeError as e:  # tensor shapes of another network
            raise ValueError(f"{source} is not a ResNet-18 state dict: {str(e).splitlines()[0]}") from None
        if unexpected or set(missing) - {"fc.weight", "fc.bias"}:
            raise ValueError(
                f"{source} is not a ResNet-18 state dict: missing {sorted(set(missing) - {'fc.weight', 'fc.bias'})[:5]}, "
                f"unexpected {sorted(unexpected)[:5]}"
            )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-1] > self.image_size or images.shape[-2] > self.image_size:
            images = F.interpolate(images, size=(self.image_size, self.image_size), mode="area")
        raw = self.net(images)
        if self.code_activation == "none":
            return self.code_mean + self.code_scale * raw
        return CODE_ACTIVATIONS[self.code_activation](raw)


class PointEncoding(nn.Module):
    """What the decoder sees of a query point: [..., 3] -> [..., out_dim].

    octaves = 0: the coordinates times `scale` (the paper: scale 1). A scale s > 1 is the paper's
    decoder with its point weights initialised s times larger and, under Adam, learnt s times faster:
    an MLP fed coordinates in [-0.5, 0.5] otherwise needs thousands of steps to grow the steep
    weights that sharp occupancy boundaries need. The decoder stays piecewise linear.
    octaves = K > 0: Fourier features [p, sin(2^k pi p), cos(2^k pi p)], k = 0 .. K-1 (Tancik et al.,
    NeurIPS 2020), out_dim 3 + 6K; over [-0.5, 0.5] the highest octave has 2^(K-1) periods.
    """

    def __init__(self, octaves: int = 0, scale: float = 1.0):
        super().__init__()
        if octaves < 0 or not scale > 0:
            raise ValueError(f"octaves must be >= 0 and scale > 0, got {octaves} and {scale}")
        if octaves and scale != 1.0:
            raise ValueError(f"a point scale ({scale:g}) applies to raw coordinates only; with {octaves} Fourier "
                             "octaves leave it at 1, or use point_octaves 0 (--point-octaves 0 --point-scale S)")
        self.octaves = octaves
        self.scale = float(scale)
        self.register_buffer("frequencies", math.pi * 2.0 ** torch.arange(octaves, dtype=torch.float32), persistent=False)

    @property
    def out_dim(self) -> int:
        return 3 + 6 * self.octaves

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        if not self.octaves:
            return points * self.scale if self.scale != 1.0 else points
        angles = (points[..., None] * self.frequencies.to(points.dtype)).flatten(-2)  # [..., 3 * octaves]
        return torch.cat([points, torch.sin(angles), torch.cos(angles)], dim=-1)


class SkipLinear(nn.Module):
    """A linear layer over [h, p, z], its weight kept in three blocks.

    y = W_h h + W_p p + (W_z z + b). The bracket depends only on the shape code, so inference
    computes it once per shape (`code_term`) instead of once per query point.
    """

    def __init__(self, hidden_dim: int, point_dim: int, code_dim: int, out_dim: int):
        super().__init__()
        self.hidden = nn.Linear(hidden_dim, out_dim, bias=False) if hidden_dim else None
        self.point = nn.Linear(point_dim, out_dim, bias=False) if point_dim else None
        self.code = nn.Linear(code_dim, out_dim) if code_dim else None
        self.bias = None if code_dim else nn.Parameter(torch.zeros(out_dim))

    def init_weights(self, scheme: str) -> None:
        """"blocks": each block as nn.Linear initialises itself for its own input size (uniform
        +-1/sqrt(fan_in)), so the 3 point coordinates start with large weights and the decoder sees
        position from the first step. "imnet": IM-NET's N(0, 0.02) weights and zero biases."""
        blocks = [m for m in (self.hidden, self.point, self.code) if m is not None]
        for block in blocks:
            if scheme == "imnet":
                nn.init.normal_(block.weight, 0.0, 0.02)
            else:
                bound = 1.0 / math.sqrt(block.in_features)
                nn.init.uniform_(block.weight, -bound, bound)
        if self.code is not None:
            if scheme == "imnet":
                nn.init.zeros_(self.code.bias)
            else:
                bound = 1.0 / math.sqrt(self.code.in_features)
                nn.init.uniform_(self.code.bias, -bound, bound)

    def code_term(self, z: torch.Tensor) -> torch.Tensor:
        """[B, code_dim] -> [B, 1, out_dim]."""
        term = self.code(z) if self.code is not None else self.bias.expand(z.shape[0], -1)
        return term.unsqueeze(1)

    def forward(self, h: torch.Tensor | None, p: torch.Tensor, code_term: torch.Tensor) -> torch.Tensor:
        """h [B, N, hidden_dim] or None, p [B, N, point_dim], code_term [B, 1, out] -> [B, N, out].

        Each block's product is accumulated into the sum by the matrix multiply itself
        (`baddbmm`: C + A @ B), not by separate passes over [B, N, out]: those are memory-bound, and
        on 2 CPU cores the plain sum took 1.5x as long for a 256-wide layer."""
        y = code_term
        for block, x in ((self.point, p), (self.hidden, h)):
            if block is not None:
                y = torch.baddbmm(y, x, block.weight.t().expand(x.shape[0], -1, -1))
        return y


class Decoder(nn.Module):
    """IM-NET's implicit decoder: occupancy of query points given a shape code.

    Six fully connected layers (widths 2048, 1024, 512, 256, 128, 1 by default), LeakyReLU 0.02,
    sigmoid output. With `skips`, every layer after the first also sees [p, z] again, as in the
    paper. The point enters through `PointEncoding(point_octaves)` (0: raw coordinates).

    forward: codes [B, code_dim], points [B, N, 3] -> occupancy [B, N]; `logits` the same before
    the sigmoid (what training's BCE loss and range bounds work on).

    `level` (a buffer, saved with the weights) is the iso-level meshes of this decoder are extracted
    at: 0.5 until IM-AE training measures the best one on its training shapes (`imnet.calibration`).
    """

    def __init__(
        self,
        code_dim: int = 128,
        widths: tuple[int, ...] = (2048, 1024, 512, 256, 128),
        skips: bool = True,
        point_octaves: int = 0,
        init: str = "blocks",
        point_scale: float = 1.0,
    ):
        super().__init__()
        if init not in ("blocks", "imnet"):
            raise ValueError(f"init must be 'blocks' or 'imnet', got {init!r}")
        self.code_dim = code_dim
        self.point_encoding = PointEncoding(point_octaves, point_scale)
        point_dim = self.point_encoding.out_dim
        layers = []
        h_dim = 0
        for i, width in enumerate((*widths, 1)):
            sees_pz = i == 0 or skips
            layers.append(SkipLinear(h_dim, point_dim if sees_pz else 0, code_dim if sees_pz else 0, width))
            h_dim = width
        self.layers = nn.ModuleList(layers)
        for layer in self.layers:
            layer.init_weights(init)
        self.register_buffer("level", torch.tensor(0.5))

    @property
    def iso_level(self) -> float:
        """`level` as a Python float, rounded to 6 decimals (the buffer is float32: 0.35 reads 0.3499999940)."""
        return round(float(self.level), 6)

    def code_terms(self, codes: torch.Tensor) -> list[torch.Tensor]:
        """The code-dependent part of every layer: [B, code_dim] -> list of [B, 1, width]."""
        return [layer.code_term(codes) for layer in self.layers]

    def logits_terms(self, points: torch.Tensor, terms: list[torch.Tensor]) -> torch.Tensor:
        """Logits from precomputed `code_terms`: points [B, N, 3] -> [B, N]."""
        p = self.point_encoding(points)
        h = None
        for i, (layer, term) in enumerate(zip(self.layers, terms)):
            h = layer(h, p, term)
            if i < len(self.layers) - 1:
                h = F.leaky_relu(h, LEAKY_SLOPE)
        return h.squeeze(-1)

    def forward_terms(self, points: torch.Tensor, terms: list[torch.Tensor]) -> torch.Tensor:
        """Occupancy from precomputed `code_terms`: points [B, N, 3] -> [B, N]."""
        return torch.sigmoid(self.logits_terms(points, terms))

    def logits(self, codes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return self.logits_terms(points, self.code_terms(codes))

    def forward(self, codes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(codes, points))


class IMNet(nn.Module):
    """The whole model: voxel encoder (IM-AE), image encoder (IM-SVR) and the shared decoder."""

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config = config or ModelConfig()
        self.voxel_encoder = VoxelEncoder(config.code_dim, config.voxel_channels, config.voxel_norm, config.code_activation)
        self.image_encoder = ImageEncoder(config.code_dim, config.code_activation, config.image_size)
        self.decoder = Decoder(config.code_dim, config.decoder_widths, config.decoder_skips, config.point_octaves,
                               config.decoder_init, config.point_scale)

    def forward(self, voxels: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Auto-encoder pass: voxels [B, 1, 64, 64, 64], points [B, N, 3] -> occupancy logits [B, N]."""
        return self.decoder.logits(self.voxel_encoder(voxels), points)

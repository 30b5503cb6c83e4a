"""The IM-NET networks: an implicit field decoder and the two encoders that produce its shape code.

    VoxelEncoder   [B, 1, 64, 64, 64]  -> [B, 128]      (IM-AE)
    ImageEncoder   [B, 1, 128, 128]    -> [B, 128]      (IM-SVR, torchvision ResNet-18)
    Decoder        [B, 128], [B, N, 3] -> [B, N]        occupancy in [0, 1]

`IMNet` bundles the three so that one checkpoint holds a whole model.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from imnet.config import ModelConfig

__all__ = ["LEAKY_SLOPE", "VoxelEncoder", "ImageEncoder", "SkipLinear", "Decoder", "IMNet"]

LEAKY_SLOPE = 0.02  # the paper's LeakyReLU slope, used in every network


class VoxelEncoder(nn.Module):
    """3D CNN of IM-AE: four strided 4^3 convolutions, then a valid 4^3 convolution to the code.

    [B, 1, 64, 64, 64] -> [B, code_dim], values in (0, 1) (sigmoid, as in the paper).
    """

    def __init__(self, code_dim: int = 128, channels: tuple[int, ...] = (32, 64, 128, 256), norm: str = "batch"):
        super().__init__()
        if norm not in ("batch", "instance"):
            raise ValueError(f"norm must be 'batch' or 'instance', got {norm!r}")
        Norm = nn.BatchNorm3d if norm == "batch" else lambda c: nn.InstanceNorm3d(c, affine=True)
        layers: list[nn.Module] = []
        c_in = 1
        for c_out in channels:  # 64 -> 32 -> 16 -> 8 -> 4 with the default four layers
            layers += [nn.Conv3d(c_in, c_out, 4, stride=2, padding=1, bias=False), Norm(c_out), nn.LeakyReLU(LEAKY_SLOPE)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Conv3d(c_in, code_dim, 4, stride=1, padding=0)

    def forward(self, voxels: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.head(self.features(voxels)).flatten(1))


class ImageEncoder(nn.Module):
    """torchvision's ResNet-18 on one grayscale channel, with a code-sized head.

    [B, 1, 128, 128] (pixels / 255, object dark on white) -> [B, code_dim], values in (0, 1)
    (sigmoid, matching the range of the AE codes it regresses).
    """

    def __init__(self, code_dim: int = 128, pretrained_path: str | Path | None = None):
        super().__init__()
        self.net = torchvision.models.resnet18(weights=None, num_classes=code_dim)
        self.net.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        if pretrained_path:
            self.load_imagenet_weights(pretrained_path)

    def load_imagenet_weights(self, path: str | Path) -> None:
        """Initialise from a LOCAL torchvision ResNet-18 state dict (e.g. resnet18-f37072fd.pth).

        The RGB first convolution is summed over its colour channels (a gray image is R = G = B);
        the ImageNet classifier is dropped.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrained image-encoder weights not found: {path}. Download torchvision's "
                "resnet18 ImageNet weights on a machine with internet access and pass the local file."
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = {k.removeprefix("net."): v for k, v in state.items() if not k.removeprefix("net.").startswith("fc.")}
        if state["conv1.weight"].shape[1] == 3:
            state["conv1.weight"] = state["conv1.weight"].sum(dim=1, keepdim=True)
        missing, unexpected = self.net.load_state_dict(state, strict=False)
        if unexpected or set(missing) - {"fc.weight", "fc.bias"}:
            raise ValueError(
                f"{path} is not a ResNet-18 state dict: missing {sorted(set(missing) - {'fc.weight', 'fc.bias'})}, "
                f"unexpected {sorted(unexpected)}"
            )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(images))


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

    def code_term(self, z: torch.Tensor) -> torch.Tensor:
        """[B, code_dim] -> [B, 1, out_dim]."""
        term = self.code(z) if self.code is not None else self.bias.expand(z.shape[0], -1)
        return term.unsqueeze(1)

    def forward(self, h: torch.Tensor | None, p: torch.Tensor, code_term: torch.Tensor) -> torch.Tensor:
        """h [B, N, hidden_dim] or None, p [B, N, 3], code_term [B, 1, out] -> [B, N, out]."""
        y = code_term
        if self.hidden is not None:
            y = y + self.hidden(h)
        if self.point is not None:
            y = y + self.point(p)
        return y


class Decoder(nn.Module):
    """IM-NET's implicit decoder: occupancy of query points given a shape code.

    Six fully connected layers (widths 2048, 1024, 512, 256, 128, 1 by default), LeakyReLU 0.02,
    sigmoid output. With `skips`, every layer after the first also sees [p, z] again, as in the paper.

    forward: codes [B, code_dim], points [B, N, 3] -> occupancy [B, N].
    """

    def __init__(self, code_dim: int = 128, widths: tuple[int, ...] = (2048, 1024, 512, 256, 128), skips: bool = True):
        super().__init__()
        self.code_dim = code_dim
        layers = []
        h_dim = 0
        for i, width in enumerate((*widths, 1)):
            sees_pz = i == 0 or skips
            layers.append(SkipLinear(h_dim, 3 if sees_pz else 0, code_dim if sees_pz else 0, width))
            h_dim = width
        self.layers = nn.ModuleList(layers)

    def code_terms(self, codes: torch.Tensor) -> list[torch.Tensor]:
        """The code-dependent part of every layer: [B, code_dim] -> list of [B, 1, width]."""
        return [layer.code_term(codes) for layer in self.layers]

    def forward_terms(self, points: torch.Tensor, terms: list[torch.Tensor]) -> torch.Tensor:
        """Occupancy from precomputed `code_terms`: points [B, N, 3] -> [B, N]."""
        h = None
        for i, (layer, term) in enumerate(zip(self.layers, terms)):
            h = layer(h, points, term)
            if i < len(self.layers) - 1:
                h = F.leaky_relu(h, LEAKY_SLOPE)
        return torch.sigmoid(h.squeeze(-1))

    def forward(self, codes: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        return self.forward_terms(points, self.code_terms(codes))


class IMNet(nn.Module):
    """The whole model: voxel encoder (IM-AE), image encoder (IM-SVR) and the shared decoder."""

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config = config or ModelConfig()
        self.voxel_encoder = VoxelEncoder(config.code_dim, config.voxel_channels, config.voxel_norm)
        self.image_encoder = ImageEncoder(config.code_dim)
        self.decoder = Decoder(config.code_dim, config.decoder_widths, config.decoder_skips)

    def forward(self, voxels: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Auto-encoder pass: voxels [B, 1, 64, 64, 64], points [B, N, 3] -> occupancy [B, N]."""
        return self.decoder(self.voxel_encoder(voxels), points)

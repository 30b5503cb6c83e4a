"""The IM-NET networks: output shapes, the decoder's precomputed-code path, ImageNet initialisation."""

import pytest
import torch
import torchvision

from imnet.config import ModelConfig
from imnet.model import Decoder, IMNet, ImageEncoder, VoxelEncoder

SMALL = ModelConfig(code_dim=32, decoder_widths=(64, 64, 32), voxel_channels=(8, 8, 16, 16))


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_voxel_encoder_maps_64_cubed_voxels_to_codes_in_0_1(norm):
    torch.manual_seed(0)
    encoder = VoxelEncoder(code_dim=32, channels=(8, 8, 16, 16), norm=norm)
    codes = encoder((torch.rand(2, 1, 64, 64, 64) > 0.5).float())
    assert codes.shape == (2, 32)
    assert ((codes > 0) & (codes < 1)).all()


def test_voxel_encoder_rejects_unknown_norm():
    with pytest.raises(ValueError, match="norm must be 'batch' or 'instance'"):
        VoxelEncoder(norm="layer")


def test_image_encoder_maps_128_gray_images_to_codes_in_0_1():
    torch.manual_seed(0)
    codes = ImageEncoder(code_dim=32).eval()(torch.rand(2, 1, 128, 128))
    assert codes.shape == (2, 32)
    assert ((codes > 0) & (codes < 1)).all()


@pytest.mark.parametrize("skips", [True, False])
def test_decoder_gives_one_occupancy_per_point(skips):
    torch.manual_seed(0)
    decoder = Decoder(code_dim=32, widths=(64, 64, 32), skips=skips)
    occupancy = decoder(torch.rand(3, 32), torch.rand(3, 100, 3) - 0.5)
    assert occupancy.shape == (3, 100)
    assert ((occupancy > 0) & (occupancy < 1)).all()


def test_decoder_without_skips_sees_point_and_code_only_in_the_first_layer():
    with_skips = Decoder(code_dim=32, widths=(64, 64, 32), skips=True)
    without = Decoder(code_dim=32, widths=(64, 64, 32), skips=False)
    count = lambda m: sum(p.numel() for p in m.parameters())
    # Each of the 3 later layers loses a (3 + 32) x width block and its code bias is replaced by a plain bias.
    assert count(with_skips) - count(without) == (3 + 32) * (64 + 32 + 1)


@pytest.mark.parametrize("skips", [True, False])
def test_decoder_forward_equals_the_precomputed_code_terms_path(skips):
    torch.manual_seed(0)
    decoder = Decoder(code_dim=32, widths=(64, 64, 32), skips=skips)
    codes, points = torch.rand(2, 32), torch.rand(2, 500, 3) - 0.5
    terms = decoder.code_terms(codes)
    assert [t.shape for t in terms] == [(2, 1, 64), (2, 1, 64), (2, 1, 32), (2, 1, 1)]
    # Terms computed once, used for two halves of the points: what chunked inference does.
    halves = torch.cat([decoder.forward_terms(points[:, :250], terms), decoder.forward_terms(points[:, 250:], terms)], 1)
    torch.testing.assert_close(halves, decoder(codes, points), rtol=0, atol=1e-6)


def test_decoder_equals_the_papers_concatenating_mlp():
    """y = W [h, p, z] + b, with W split into blocks, is the paper's concatenation."""
    torch.manual_seed(0)
    decoder = Decoder(code_dim=32, widths=(64, 64, 32), skips=True)
    codes, points = torch.rand(2, 32), torch.rand(2, 10, 3) - 0.5
    pz = torch.cat([points, codes[:, None].expand(-1, 10, -1)], -1)
    h = None
    for i, layer in enumerate(decoder.layers):
        blocks = ([layer.hidden.weight] if layer.hidden is not None else []) + [layer.point.weight, layer.code.weight]
        x = pz if h is None else torch.cat([h, pz], -1)
        h = x @ torch.cat(blocks, 1).T + layer.code.bias
        h = torch.nn.functional.leaky_relu(h, 0.02) if i < len(decoder.layers) - 1 else torch.sigmoid(h[..., 0])
    torch.testing.assert_close(decoder(codes, points), h)


def test_imnet_auto_encodes_voxels_into_point_occupancy():
    torch.manual_seed(0)
    model = IMNet(SMALL).eval()
    occupancy = model(torch.zeros(2, 1, 64, 64, 64), torch.rand(2, 50, 3) - 0.5)
    assert occupancy.shape == (2, 50)
    assert model.decoder.code_dim == 32


def test_image_encoder_loads_a_local_imagenet_state_dict(tmp_path):
    torch.manual_seed(0)
    imagenet = torchvision.models.resnet18(weights=None)  # 3-channel conv1, 1000-class fc: the real layout
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(imagenet.state_dict(), path)

    encoder = ImageEncoder(code_dim=32, pretrained_path=path)
    # A gray image is R = G = B, so the RGB filters summed over colour see it as the RGB net would.
    torch.testing.assert_close(encoder.net.conv1.weight, imagenet.conv1.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(encoder.net.layer4[1].conv2.weight, imagenet.layer4[1].conv2.weight)
    torch.testing.assert_close(encoder.net.bn1.running_var, imagenet.bn1.running_var)
    assert encoder.net.fc.weight.shape == (32, 512)  # the ImageNet classifier is not used

    gray = torch.rand(1, 1, 128, 128)
    features = lambda net, x: net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))
    torch.testing.assert_close(features(encoder.net.eval(), gray), features(imagenet.eval(), gray.expand(-1, 3, -1, -1)))


def test_image_encoder_pretrained_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        ImageEncoder(pretrained_path=tmp_path / "missing.pth")
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "something.else": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="not a ResNet-18 state dict"):
        ImageEncoder(pretrained_path=tmp_path / "other.pth")

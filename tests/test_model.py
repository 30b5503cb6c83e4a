"""The IM-NET networks: output shapes, the decoder's precomputed-code path, ImageNet initialisation."""

import pytest
import torch
import torchvision

from imnet.checkpoint import CheckpointError, load_weights_file

from imnet.config import ModelConfig
from imnet.model import Decoder, IMNet, ImageEncoder, MatmulConv2d, PointEncoding, VoxelEncoder

SMALL = ModelConfig(code_dim=32, decoder_widths=(64, 64, 32), voxel_channels=(8, 8, 16, 16))


@pytest.mark.parametrize("norm", ["batch", "instance", "none"])
def test_voxel_encoder_maps_64_cubed_voxels_to_codes(norm):
    torch.manual_seed(0)
    voxels = (torch.rand(2, 1, 64, 64, 64) > 0.5).float()
    codes = VoxelEncoder(code_dim=32, channels=(8, 8, 16, 16), norm=norm)(voxels)
    assert codes.shape == (2, 32) and (codes < 0).any()  # linear codes (the default)
    paper = VoxelEncoder(code_dim=32, channels=(8, 8, 16, 16), norm=norm, code_activation="sigmoid")(voxels)
    assert ((paper > 0) & (paper < 1)).all()


@pytest.mark.parametrize("channels", [(8, 16, 32, 64), (32, 64, 128, 256)])
def test_untrained_voxel_encoder_gives_different_shapes_different_codes(channels):
    """The init keeps each layer's scale: codes of different boxes differ by about a trained
    encoder's spread (0.14), not by PyTorch's default init's 0.001, which the decoder learns to ignore."""
    torch.manual_seed(0)
    voxels = torch.zeros(8, 1, 64, 64, 64)
    for i, (low, high) in enumerate(torch.randint(4, 60, (8, 2, 3)).sort(dim=1).values):
        voxels[i, 0, low[0]:high[0], low[1]:high[1], low[2]:high[2]] = 1
    with torch.no_grad():
        codes = VoxelEncoder(code_dim=128, channels=channels, norm="none")(voxels)
    spread = codes.std(dim=0).mean().item()
    assert 0.03 < spread < 1.0, spread


def test_voxel_encoder_rejects_unknown_settings():
    with pytest.raises(ValueError, match="norm must be 'batch', 'instance' or 'none'"):
        VoxelEncoder(norm="layer")
    with pytest.raises(ValueError, match="code_activation must be one of"):
        VoxelEncoder(code_activation="relu")


def test_image_encoder_maps_128_gray_images_to_standardised_codes():
    torch.manual_seed(0)
    encoder = ImageEncoder(code_dim=32).eval()
    raw = encoder(torch.rand(2, 1, 128, 128))
    assert raw.shape == (2, 32)
    targets = torch.randn(100, 32) * torch.linspace(0.1, 3, 32) + 5
    encoder.set_code_statistics(targets)  # outputs = mean + spread * network output
    torch.testing.assert_close(encoder(torch.rand(2, 1, 128, 128) * 0 + 0.5),
                               targets.mean(0) + targets.std(0) * encoder.net(torch.full((2, 1, 128, 128), 0.5)))
    paper = ImageEncoder(code_dim=32, code_activation="sigmoid").eval()(torch.rand(2, 1, 128, 128))
    assert ((paper > 0) & (paper < 1)).all()


def test_image_encoder_works_at_its_image_size():
    """The 128x128 input is area-averaged to image_size before the ResNet; smaller inputs pass as they are."""
    torch.manual_seed(0)
    encoder = ImageEncoder(code_dim=8, image_size=64).eval()
    images = torch.rand(3, 1, 128, 128)
    pooled = images.reshape(3, 1, 64, 2, 64, 2).mean((3, 5))  # 2x2 area means
    with torch.no_grad():
        torch.testing.assert_close(encoder(images), encoder.net(pooled))
        torch.testing.assert_close(encoder(pooled), encoder.net(pooled))
    assert IMNet(ModelConfig(image_size=96)).image_encoder.image_size == 96
    assert ModelConfig.paper().image_size == 128 and ModelConfig().image_size == 64
    with pytest.raises(ValueError, match="image_size must be in 32..128"):
        ImageEncoder(image_size=256)


@pytest.mark.parametrize("stride, padding, kernel, side", [(1, 1, 3, 2), (2, 1, 3, 4), (2, 0, 1, 4), (1, 2, 3, 3)])
def test_matmul_conv2d_is_the_same_convolution_forward_and_backward(stride, padding, kernel, side):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 16, kernel, stride, padding, bias=True).double()
    matmul = MatmulConv2d.from_conv(conv)
    assert matmul.weight is conv.weight and list(matmul.state_dict()) == list(conv.state_dict())
    x = torch.randn(3, 8, side, side, dtype=torch.float64, requires_grad=True)
    a, b = conv(x), matmul(x)
    torch.testing.assert_close(a, b)
    grads = [torch.autograd.grad(y.square().sum(), (x, conv.weight, conv.bias)) for y in (a, b)]
    for ga, gb in zip(*grads):
        torch.testing.assert_close(ga, gb)
    with pytest.raises(ValueError, match="ungrouped"):
        MatmulConv2d.from_conv(torch.nn.Conv2d(8, 16, 3, groups=2))


def test_the_resnets_last_stage_uses_matmul_convolutions_at_64_only():
    """Where oneDNN's weight gradients on 2x2 maps are slow; the state dict is torchvision's either way."""
    small, large = ImageEncoder(code_dim=8, image_size=64), ImageEncoder(code_dim=8, image_size=128)
    kinds = lambda encoder: {type(m) for m in encoder.net.layer4.modules() if isinstance(m, torch.nn.Conv2d)}
    assert kinds(small) == {MatmulConv2d} and kinds(large) == {torch.nn.Conv2d}
    assert type(small.net.layer3[0].conv1) is torch.nn.Conv2d
    assert small.state_dict().keys() == large.state_dict().keys()
    large.load_state_dict(small.state_dict())  # weights move between sizes (e.g. an SVR rebuilt at another size)


def test_point_scale_with_fourier_octaves_is_refused():
    with pytest.raises(ValueError, match="applies to raw coordinates only"):
        PointEncoding(octaves=4, scale=8.0)
    assert PointEncoding(octaves=0, scale=8.0)(torch.ones(1, 3)).tolist() == [[8.0, 8.0, 8.0]]


def test_point_encoding_is_fourier_features():
    encoding = PointEncoding(octaves=2)
    p = torch.tensor([[0.25, -0.5, 0.0]])
    out = encoding(p)
    assert out.shape == (1, 3 + 6 * 2) and encoding.out_dim == 15
    torch.testing.assert_close(out[0, :3], p[0])
    angles = torch.tensor([0.25 * torch.pi, 0.5 * torch.pi, -0.5 * torch.pi, -torch.pi, 0.0, 0.0])
    torch.testing.assert_close(out[0, 3:9], torch.sin(angles))
    torch.testing.assert_close(out[0, 9:], torch.cos(angles))
    assert PointEncoding(0)(p) is p


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

    encoder = ImageEncoder(code_dim=32)
    encoder.load_imagenet_state(load_weights_file(path), str(path))
    # A gray image is R = G = B, so the RGB filters summed over colour see it as the RGB net would.
    torch.testing.assert_close(encoder.net.conv1.weight, imagenet.conv1.weight.sum(dim=1, keepdim=True))
    torch.testing.assert_close(encoder.net.layer4[1].conv2.weight, imagenet.layer4[1].conv2.weight)
    torch.testing.assert_close(encoder.net.bn1.running_var, imagenet.bn1.running_var)
    assert encoder.net.fc.weight.shape == (32, 512)  # the ImageNet classifier is not used

    gray = torch.rand(1, 1, 128, 128)
    features = lambda net, x: net.layer1(net.maxpool(net.relu(net.bn1(net.conv1(x)))))
    torch.testing.assert_close(features(encoder.net.eval(), gray), features(imagenet.eval(), gray.expand(-1, 3, -1, -1)))


def test_image_encoder_pretrained_errors_name_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="missing.pth"):
        load_weights_file(tmp_path / "missing.pth", "ResNet-18 weights file")
    (tmp_path / "garbage.pth").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="garbage.pth is not a readable ResNet-18 weights file") as error:
        load_weights_file(tmp_path / "garbage.pth", "ResNet-18 weights file")
    assert "weights_only=False" not in str(error.value) and "\n" not in str(error.value)
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "something.else": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="other.pth is not a ResNet-18 state dict"):
        ImageEncoder().load_imagenet_state(load_weights_file(tmp_path / "other.pth"), str(tmp_path / "other.pth"))

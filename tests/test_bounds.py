"""imnet.bounds: the decoder's output at every point of a box lies within the box's bound.

Checked on random decoders (with and without skips) and on the trained tiny decoder of conftest.py,
for boxes from half the cube down to single points, against the decoder's own float32 forward pass.
"""

import numpy as np
import pytest
import torch

from imnet.bounds import BOUND_COST, DecoderBounds, check_boundable
from imnet.checkpoint import load_model
from imnet.model import Decoder

SIZES = (0.5, 0.1, 0.02, 0.004, 0.0)


def random_boxes(rng, size, n=64):
    low = rng.uniform(-0.5, 0.5 - size, (n, 3))
    return low, low + size


def points_in(rng, low, high, per_box=64):
    """Random points of each box plus its 8 corners, as the float32 points a field is called with."""
    inner = rng.uniform(low[:, None], high[:, None], (len(low), per_box, 3))
    corners = np.where(np.indices((2, 2, 2)).reshape(3, -1).T[None].astype(bool), high[:, None], low[:, None])
    return np.concatenate([inner, corners], axis=1).astype(np.float32)


def occupancy(decoder, code, points):
    with torch.inference_mode():
        return decoder(code[None], torch.from_numpy(points.reshape(1, -1, 3)))[0].reshape(points.shape[:2]).numpy()


def assert_sound(decoder, code, seed=0):
    rng = np.random.default_rng(seed)
    for method in ("interval", "affine"):
        bounds = DecoderBounds(decoder, code, method=method)
        for size in SIZES:
            low, high = random_boxes(rng, size)
            lower, upper = bounds.logit_bounds(low, high)
            values = occupancy(decoder, code, points_in(rng, low, high))
            sigmoid = lambda x: torch.sigmoid(torch.as_tensor(x, dtype=torch.float32)).numpy()
            assert (values >= sigmoid(lower)[:, None]).all() and (values <= sigmoid(upper)[:, None]).all(), (method, size)


@pytest.mark.parametrize("skips, octaves, scale", [(True, 0, 1.0), (False, 0, 1.0), (True, 0, 8.0), (True, 4, 1.0), (False, 6, 1.0)])
def test_random_decoder_outputs_lie_within_bounds(skips, octaves, scale):
    torch.manual_seed(0)
    decoder = Decoder(code_dim=16, widths=(64, 48, 32), skips=skips, point_octaves=octaves, point_scale=scale).eval()
    with torch.no_grad():  # larger weights than the default init: a sharper, more nonlinear field
        for p in decoder.parameters():
            p.mul_(3.0)
    assert_sound(decoder, torch.rand(16))


def test_trained_decoder_outputs_lie_within_bounds(tiny_checkpoint):
    model, _ = load_model(tiny_checkpoint)
    assert_sound(model.decoder.eval(), torch.rand(model.config.code_dim), seed=1)


def test_bounds_shrink_with_boxes_and_affine_is_tighter(tiny_checkpoint):
    model, _ = load_model(tiny_checkpoint)
    code = torch.zeros(model.config.code_dim)
    rng = np.random.default_rng(2)
    centre = rng.uniform(-0.2, 0.2, (64, 3))
    widths = {}
    for method in ("interval", "affine"):
        bounds = DecoderBounds(model.decoder, code, method=method)
        widths[method] = [np.subtract(*bounds.logit_bounds(centre - s / 2, centre + s / 2)[::-1]) for s in SIZES]
        for wide, narrow in zip(widths[method], widths[method][1:]):
            assert np.all(narrow <= wide + 1e-3)  # nested boxes
        assert np.median(widths[method][-1]) < 1e-2  # a point: only the rounding margin is left
    # Over half the cube most neurons straddle 0: no winner. With Fourier point features (the tiny
    # model has 4 octaves) the Taylor form of sin/cos is loose until boxes are small against the
    # highest frequency's period (1/8 of the cube), so affine wins on the small boxes.
    for size in (2, 3):
        assert np.median(widths["affine"][size]) < np.median(widths["interval"][size])
    assert BOUND_COST == {"interval": 2.0, "affine": 5.0}


def test_affine_forms_bound_sub_boxes_and_points_without_a_pass(tiny_checkpoint):
    model, _ = load_model(tiny_checkpoint)
    code = torch.zeros(model.config.code_dim)
    rng = np.random.default_rng(3)
    low, high = random_boxes(rng, 0.05)
    forms = DecoderBounds(model.decoder, code).affine_forms(low, high)
    points = points_in(rng, low, high).astype(np.float64)
    box = np.repeat(np.arange(len(low)), points.shape[1])
    flat = points.reshape(-1, 3)
    lower, upper = forms.over_boxes(box, flat, flat)
    logits = torch.logit(torch.from_numpy(occupancy(model.decoder, code, points.astype(np.float32)).reshape(-1)).double())
    inner = np.abs(logits.numpy()) < 15  # where float32's sigmoid is not saturated, logit is recoverable
    assert inner.mean() > 0.05
    assert np.all(logits.numpy()[inner] >= lower[inner] - 1e-3) and np.all(logits.numpy()[inner] <= upper[inner] + 1e-3)
    whole_low, whole_high = forms.bounds()
    assert np.all(lower >= whole_low[box] - 1e-9) and np.all(upper <= whole_high[box] + 1e-9)


def test_unknown_decoder_parts_and_bad_boxes_are_refused():
    decoder = Decoder(code_dim=8, widths=(16, 8))
    decoder.encoding = torch.nn.Linear(3, 6)  # e.g. a Fourier feature layer this module does not model
    with pytest.raises(NotImplementedError, match="encoding"):
        check_boundable(decoder)
    bounds = DecoderBounds(Decoder(code_dim=8, widths=(16, 8)), torch.zeros(8))
    with pytest.raises(ValueError, match="low \\[K, 3\\] and high \\[K, 3\\]"):
        bounds.logit_bounds(np.zeros((4, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="high >= low"):
        bounds.logit_bounds(np.ones((1, 3)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="bounds method must be one of affine, interval"):
        DecoderBounds(Decoder(code_dim=8, widths=(16, 8)), torch.zeros(8), method="taylor")

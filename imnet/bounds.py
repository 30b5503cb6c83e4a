"""Range analysis of an IM-NET decoder: bounds of its output over whole boxes of points.

    bounds = DecoderBounds(decoder, code, method="affine")
    low, high = bounds.logit_bounds(box_low, box_high)      # [K, 3], [K, 3] -> [K], [K]
    form = bounds.affine_forms(box_low, box_high)           # logit ~ value + coeffs . e +- error

For every point x of box k (``box_low[k] <= x <= box_high[k]``) the decoder's pre-sigmoid output
(its logit; occupancy = sigmoid(logit)) lies in ``[low[k], high[k]]``. The sigmoid is monotone, so a
bound of the logit is a bound of the occupancy, and comparing with ``logit(level)`` decides the
same side as comparing the occupancy with ``level``. Used by certified extraction
(``imnet.extract``): a box whose bound lies entirely on one side of the level needs no sampling.

Two methods, after Sharp & Jacobson, "Spelunking the Deep" (SIGGRAPH 2022):

- **interval**: every activation is an interval ``centre +- radius``. A linear layer maps it to
  ``W centre + b +- |W| radius``; LeakyReLU is monotone and maps the ends. Costs two matrix
  products per layer (the decoder's one for the centre, ``|W|`` for the radius): 2 point
  evaluations per box. It loses all correlation between neurons, so it is loose through deep nets.
- **affine**: every activation is ``value + sum_j coeffs_j e_j +- error`` with e in [-1, 1]^3 the
  position in the box (x = centre + radius * e), i.e. first-order correlations with the three
  input axes are kept exactly through the linear parts. A LeakyReLU whose input range [l, u]
  straddles 0 is replaced by its secant slope lambda = (u - 0.02 l) / (u - l), which lies above the
  function, and the gap g = -l u (1 - 0.02) / (u - l) (at the kink) becomes error: f(x) in
  lambda x + [0, g]. The new error of each such neuron is kept as its own interval term (not as a
  new noise symbol), which keeps the cost fixed: 4 rows (value + 3 coefficients) through W plus
  the error through |W|, 5 point evaluations per box. The final form is also a *linear* bound over
  the box, so sub-boxes and single points of a bounded box can be tested without another pass.

Soundness includes floating point: the decoder's own float32 forward pass rounds, and so does this
computation. Each layer adds ``2 gamma_n |W| |x|`` to the error (gamma_n = n u / (1 - n u), u =
2^-24, n the layer's fan-in: Higham's bound for any summation order, once for the forward pass and
once for the bound), so the bounds contain the values the decoder *computes* in float32, not only
the exact ones. bfloat16 evaluations are not covered (see ``imnet.inference``).

The decoder is bounded through its structure as ``imnet.model.Decoder`` builds it (its point
encoding -- raw coordinates or Fourier features, see ``DecoderBounds._point_input`` -- skip layers,
LeakyReLU between them, sigmoid after the last). A decoder with parts this module does not know
(an input encoding, another activation) is refused with a message rather than bounded wrongly.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from imnet.model import LEAKY_SLOPE, Decoder, SkipLinear

__all__ = ["BOUND_METHODS", "BOUND_COST", "AffineForms", "DecoderBounds", "check_boundable"]

BOUND_METHODS = ("affine", "interval")

BOUND_COST = {"interval": 2.0, "affine": 5.0}
"""Multiply-adds of bounding one box, in units of one decoder evaluation of one point (the
matrix products dominate both; ``bench/bench_extract.py`` measures the wall-time ratio too)."""

_UNIT_ROUNDOFF = 2.0**-24  # float32


@dataclasses.dataclass
class AffineForms:
    """Linear bounds of the logit over K boxes: for x = centre + radius * e in box k, e in [-1, 1]^3,

        value[k] + coeffs[k] . e - error[k] <= logit(x) <= value[k] + coeffs[k] . e + error[k].

    Attributes (numpy float64): value [K], coeffs [K, 3], error [K] (>= 0), and the boxes as
    centre [K, 3] and radius [K, 3] (half sizes, >= 0).
    """

    value: np.ndarray
    coeffs: np.ndarray
    error: np.ndarray
    centre: np.ndarray
    radius: np.ndarray

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bound [K] over each whole box."""
        spread = np.abs(self.coeffs).sum(axis=1) + self.error
        return self.value - spread, self.value + spread

    def over_boxes(self, box: np.ndarray, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bounds [M] of the logit over sub-boxes low [M, 3] <= x <= high [M, 3] of boxes ``box`` [M]
        (indices into K), from these forms alone: no pass through the decoder. Single points are
        sub-boxes with low == high."""
        centre, radius = self.centre[box], self.radius[box]
        safe = np.where(radius > 0, radius, 1.0)
        # Clip: a sub-box on the box's face must not leave [-1, 1] through rounding of the division.
        e_low = np.where(radius > 0, np.clip((low - centre) / safe, -1.0, 1.0), 0.0)
        e_high = np.where(radius > 0, np.clip((high - centre) / safe, -1.0, 1.0), 0.0)
        coeffs = self.coeffs[box]
        linear = self.value[box] + np.einsum("mj,mj->m", coeffs, (e_low + e_high) / 2)
        spread = np.einsum("mj,mj->m", np.abs(coeffs), (e_high - e_low) / 2) + self.error[box]
        return linear - spread, linear + spread


def check_boundable(decoder: Decoder) -> None:
    """Raise NotImplementedError if ``decoder`` has parts that the bounds here do not model."""
    known = {"layers", "point_encoding"}
    extra = [name for name, _ in decoder.named_children() if name not in known]
    extra += [name for name, _ in decoder.named_parameters(recurse=False)]
    if extra or not all(isinstance(layer, SkipLinear) for layer in decoder.layers):
        raise NotImplementedError(
            f"imnet.bounds models a Decoder made of a PointEncoding and SkipLinear layers only; this one also has "
            f"{extra or 'layers of other types'}. Add their interval/affine rule to imnet/bounds.py "
            f"(an elementwise input encoding goes in DecoderBounds._point_input)."
        )


class DecoderBounds:
    """Bounds of one shape's decoder logit over batches of axis-aligned boxes.

    The per-shape code terms are computed once; the weights' absolute values once per instance.

    Args:
        decoder: an ``imnet.model.Decoder`` (any widths, with or without skips).
        code: the shape code, [code_dim] or [1, code_dim], on the decoder's device.
        method: "affine" (tighter, 5 evaluation units per box) or "interval" (2 units).
        max_boxes: boxes per pass (the affine pass holds 4 rows of activations per box).
    """

    def __init__(self, decoder: Decoder, code: torch.Tensor, *, method: str = "affine", max_boxes: int = 8192):
        if method not in BOUND_METHODS:
            raise ValueError(f"bounds method must be one of {', '.join(BOUND_METHODS)}; got {method!r}")
        check_boundable(decoder)
        self.method = method
        self.cost = BOUND_COST[method]
        self.max_boxes = int(max_boxes)
        parameter = next(decoder.parameters())
        self.device = parameter.device
        encoding = getattr(decoder, "point_encoding", None)
        self.frequencies = encoding.frequencies.float() if encoding is not None and encoding.octaves else None
        self.point_scale = encoding.scale if encoding is not None and not encoding.octaves else 1.0
        with torch.inference_mode():
            terms = decoder.code_terms(code.reshape(1, -1).to(self.device, torch.float32))
            self.layers = [_LayerParts.of(layer, term) for layer, term in zip(decoder.layers, terms)]

    def logit_bounds(self, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lower and upper bounds [K] of the logit over boxes low [K, 3] <= x <= high [K, 3]."""
        if self.method == "affine":
            return self.affine_forms(low, high).bounds()
        centre, radius = _centre_radius(low, high)
        lower, upper = [], []
        for begin in range(0, len(centre), self.max_boxes):
            c, r = self._interval(centre[begin : begin + self.max_boxes], radius[begin : begin + self.max_boxes])
            lower.append(c - r)
            upper.append(c + r)
        return _cat(lower), _cat(upper)

    def affine_forms(self, low: np.ndarray, high: np.ndarray) -> AffineForms:
        """Affine forms of the logit over boxes low [K, 3] <= x <= high [K, 3] (method "affine")."""
        centre, radius = _centre_radius(low, high)
        value, coeffs, error = [], [], []
        for begin in range(0, len(centre), self.max_boxes):
            v, a, e = self._affine(centre[begin : begin + self.max_boxes], radius[begin : begin + self.max_boxes])
            value.append(v)
            coeffs.append(a)
            error.append(e)
        coeffs = np.concatenate(coeffs) if coeffs else np.zeros((0, 3))
        return AffineForms(_cat(value), coeffs, _cat(error), centre, radius)

    # Both passes work in float32 torch on the decoder's device; results come back as float64.

    def _inputs(self, centre: np.ndarray, radius: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        c = torch.as_tensor(centre, dtype=torch.float32, device=self.device)
        # Rounding the box to float32 may move it by half an ulp; widen the radius to cover that.
        r = torch.as_tensor(radius + _UNIT_ROUNDOFF * (np.abs(centre) + radius), dtype=torch.float32, device=self.device)
        return c, r

    def _point_input(self, c: torch.Tensor, r: torch.Tensor):
        """The affine form of what the layers see of the point: value [K, D], coefficients
        [K, 3, D] on the box's three axis symbols, error [K, D].

        Raw coordinates: the point itself (coefficients diag(r), error 0). Fourier features
        sin(a), cos(a) of an angle a = f (c + r e) over the box: the first-order Taylor form
        sin(f c) + f cos(f c) r e with the remainder bound (f r)^2 / 2 (|sin''| <= 1), or, where
        that is wider, the plain range 0 +- 1; cos likewise.
        """
        coeffs = torch.diag_embed(r)
        if self.frequencies is None:  # (scaled) coordinates: exact, up to the rounding of the product
            s = self.point_scale
            return c * s, coeffs * s, (2 * _UNIT_ROUNDOFF * s) * (c.abs() + r)
        f = self.frequencies.to(c.device)
        octaves = len(f)
        angle = (c[:, :, None] * f).flatten(1)  # [K, 3 * octaves], axis-major as PointEncoding
        spread = (r[:, :, None] * f).flatten(1)
        remainder = spread**2 / 2
        # float32: the decoder rounds the angle (an ulp of it) and sin/cos (a few ulps of 1).
        slack = 8 * _UNIT_ROUNDOFF * (1 + angle.abs() + spread)
        axis = torch.arange(3, device=c.device).repeat_interleave(octaves)  # the symbol each angle moves with
        one_hot = torch.nn.functional.one_hot(axis, 3).T.to(c.dtype)  # [3, 3 * octaves]
        values, all_coeffs, errors = [c], [coeffs], [torch.zeros_like(c)]
        for value, slope in ((torch.sin(angle), torch.cos(angle)), (torch.cos(angle), -torch.sin(angle))):
            linear = slope * spread
            taylor = (linear.abs() + remainder) < 1.0
            values.append(torch.where(taylor, value, 0.0))
            all_coeffs.append(torch.where(taylor, linear, 0.0)[:, None, :] * one_hot[None])
            errors.append(torch.where(taylor, remainder, 1.0) + slack)
        return torch.cat(values, 1), torch.cat(all_coeffs, 2), torch.cat(errors, 1)

    @torch.inference_mode()
    def _interval(self, centre: np.ndarray, radius: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pc, pr = self._inputs(centre, radius)
        pv, pa, pe = self._point_input(pc, pr)
        p_abs_max = pv.abs() + pa.abs().sum(1) + pe
        p_radius = pa.abs().sum(1) + pe
        c = r = None
        for i, layer in enumerate(self.layers):
            new_c = layer.term.expand(len(pc), -1).clone()
            slack = layer.gamma * layer.term_abs
            new_r = slack.expand(len(pc), -1).clone()
            if layer.hidden is not None:
                new_c += c @ layer.hidden.T
                new_r += (r + layer.gamma * (c.abs() + r)) @ layer.hidden_abs.T
            if layer.point is not None:
                new_c += pv @ layer.point.T
                new_r += (p_radius + layer.gamma * p_abs_max) @ layer.point_abs.T
            c, r = new_c, new_r * (1 + 4 * _UNIT_ROUNDOFF)
            if i < len(self.layers) - 1:
                lo, hi = _leaky(c - r), _leaky(c + r)
                c, r = (hi + lo) / 2, (hi - lo) / 2 * (1 + 4 * _UNIT_ROUNDOFF)
        return c[:, 0].double().cpu().numpy(), r[:, 0].double().cpu().numpy()

    @torch.inference_mode()
    def _affine(self, centre: np.ndarray, radius: np.ndarray):
        pc, pr = self._inputs(centre, radius)
        pv, pa, pe = self._point_input(pc, pr)
        p_abs_max = pv.abs() + pa.abs().sum(1) + pe
        k = len(pc)
        # value and the 3 coefficient rows of each box travel together through W: [K, 4, width].
        form = err = None
        point_form = torch.cat([pv[:, None], pa], dim=1)  # [K, 4, point_dim]
        for i, layer in enumerate(self.layers):
            new_form = torch.zeros(k, 4, layer.width, device=self.device)
            new_form[:, 0] = layer.term
            new_err = (layer.gamma * layer.term_abs).expand(k, -1).clone()
            if layer.hidden is not None:
                new_form += form @ layer.hidden.T
                magnitude = form[:, 0].abs() + form[:, 1:].abs().sum(1) + err
                new_err += (err + layer.gamma * magnitude) @ layer.hidden_abs.T
            if layer.point is not None:
                new_form += point_form @ layer.point.T
                new_err += (pe + layer.gamma * p_abs_max) @ layer.point_abs.T
            form, err = new_form, new_err * (1 + 4 * _UNIT_ROUNDOFF)
            if i < len(self.layers) - 1:
                form, err = _leaky_affine(form, err)
        value = form[:, 0, 0].double().cpu().numpy()
        coeffs = form[:, 1:, 0].double().cpu().numpy()
        return value, coeffs, err[:, 0].double().cpu().numpy()


@dataclasses.dataclass
class _LayerParts:
    """One SkipLinear layer's weights for bounding: W_h, W_p, their absolute values, the code term."""

    width: int
    term: torch.Tensor  # [width]: W_z z + b of this shape
    term_abs: torch.Tensor
    hidden: torch.Tensor | None  # [width, hidden]
    hidden_abs: torch.Tensor | None
    point: torch.Tensor | None  # [width, 3]
    point_abs: torch.Tensor | None
    gamma: float  # float32 rounding bound of a dot product of this fan-in, for forward + bound

    @classmethod
    def of(cls, layer: SkipLinear, term: torch.Tensor) -> "_LayerParts":
        hidden = layer.hidden.weight.detach().float() if layer.hidden is not None else None
        point = layer.point.weight.detach().float() if layer.point is not None else None
        term = term.reshape(-1).detach().float()
        fan_in = (hidden.shape[1] if hidden is not None else 0) + (point.shape[1] if point is not None else 0) + 2
        gamma = 2 * fan_in * _UNIT_ROUNDOFF / (1 - fan_in * _UNIT_ROUNDOFF)
        return cls(
            width=len(term), term=term, term_abs=term.abs(),
            hidden=hidden, hidden_abs=hidden.abs() if hidden is not None else None,
            point=point, point_abs=point.abs() if point is not None else None, gamma=gamma,
        )


def _leaky(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.leaky_relu(x, LEAKY_SLOPE)


def _leaky_affine(form: torch.Tensor, err: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LeakyReLU of affine forms [K, 4, W] (value, 3 coefficients) with interval errors [K, W].

    Stable neurons are exact (slope 1 or 0.02); a neuron whose range [l, u] straddles 0 becomes
    lambda x + g / 2 +- g / 2 with the secant slope lambda and the gap g at the kink (module doc).
    """
    radius = form[:, 1:].abs().sum(1) + err
    lo, hi = form[:, 0] - radius, form[:, 0] + radius
    alpha = LEAKY_SLOPE
    slope = torch.where(lo >= 0, 1.0, torch.where(hi <= 0, alpha, 0.0))
    straddles = (lo < 0) & (hi > 0)
    span = torch.where(straddles, hi - lo, 1.0)
    secant = (hi - alpha * lo) / span
    gap = torch.where(straddles, -lo * hi * (1 - alpha) / span, 0.0)
    slope = torch.where(straddles, secant, slope)
    form = form * slope[:, None]
    form[:, 0] += gap / 2
    err = slope * err + gap / 2
    # The elementwise arithmetic above rounds too: a few ulps of the neuron's magnitude.
    magnitude = form[:, 0].abs() + form[:, 1:].abs().sum(1) + err
    return form, err + 8 * _UNIT_ROUNDOFF * magnitude


def _centre_radius(low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    low = np.asarray(low, dtype=np.float64)
    high = np.asarray(high, dtype=np.float64)
    if low.ndim != 2 or low.shape[1] != 3 or high.shape != low.shape:
        raise ValueError(f"boxes must be low [K, 3] and high [K, 3]; got shapes {low.shape} and {high.shape}")
    if np.any(high < low):
        raise ValueError("every box needs high >= low on every axis")
    return (low + high) / 2, (high - low) / 2


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0)

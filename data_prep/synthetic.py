"""Procedural shape categories that stand in for ShapeNet when it is not at hand.

Every shape is a union of closed primitives (boxes, cylinders, capsules, ellipsoids, convex hulls)
concatenated *without* boolean operations: parts overlap and keep their inner faces, just as real
ShapeNet meshes do, so the synthetic meshes exercise the same voxelise -> sample -> render -> HDF5
path as the real data.

Orientation is that of ShapeNetCore v2's ``model_normalized.obj``: y up, x to the side, the front (the
side a person sits down from on a chair, an airplane's nose) towards -z. Each mesh is normalised like
every source mesh in this project: bounding-box centre at the origin, bounding-box diagonal 1.

The random parameters of each category live in one frozen dataclass per category whose fields declare
their own ranges (see :func:`sample_parameters`), so that a shape can be described, logged and rebuilt
from its parameters alone::

    params = sample_parameters("chair", seed=3)   # ChairParameters(seat_shape='rect', ...)
    mesh = build_shape(params)                    # == generate_shape("chair", seed=3)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import trimesh

from imnet.datafile import SYNSETS
from imnet.mesh import normalise

# Category name -> ShapeNet synset id, so that synthetic data is laid out and named like ShapeNet.
CATEGORIES: dict[str, str] = {name: SYNSETS[name] for name in ("airplane", "chair", "lamp", "sofa", "table")}

Seed = int | Sequence[int]


# --------------------------------------------------------------------------------------------------
# Parameter declarations: each field says how it is drawn, so sampling and tests need no second list.


def _uniform(low: float, high: float):
    return field(metadata={"uniform": (low, high)})


def _integer(low: int, high: int):
    """An integer in [low, high], both included."""
    return field(metadata={"integer": (low, high)})


def _choice(options: dict):
    """One of the keys of ``options``, drawn with the (relative) weights given as values."""
    return field(metadata={"choice": options})


def _flag(probability: float):
    return field(metadata={"flag": probability})


def _draw(spec: dict, rng: np.random.Generator):
    if "uniform" in spec:
        return float(rng.uniform(*spec["uniform"]))
    if "integer" in spec:
        low, high = spec["integer"]
        return int(rng.integers(low, high + 1))
    if "choice" in spec:
        options = list(spec["choice"])
        weights = np.array(list(spec["choice"].values()), dtype=float)
        return options[rng.choice(len(options), p=weights / weights.sum())]
    return bool(rng.random() < spec["flag"])


@dataclass(frozen=True)
class ChairParameters:
    """Chair dimensions in metres (the mesh is normalised afterwards); angles in degrees."""

    seat_shape: str = _choice({"rect": 0.75, "round": 0.25})
    seat_width: float = _uniform(0.40, 0.60)
    seat_depth: float = _uniform(0.38, 0.55)  # a round seat uses seat_width as its diameter
    seat_height: float = _uniform(0.38, 0.52)
    seat_thickness: float = _uniform(0.03, 0.10)
    base: str = _choice({"four_legs": 0.55, "three_legs": 0.15, "star": 0.30})
    leg_profile: str = _choice({"square": 0.5, "round": 0.5})
    leg_thickness: float = _uniform(0.025, 0.06)
    leg_inset: float = _uniform(0.0, 0.06)
    leg_splay: float = _uniform(0.0, 12.0)
    stretchers: bool = _flag(0.35)
    star_arms: int = _integer(4, 6)
    star_radius: float = _uniform(0.25, 0.35)
    column_radius: float = _uniform(0.02, 0.035)
    back_style: str = _choice({"solid": 0.45, "slats": 0.26, "rails": 0.26, "none": 0.03})  # none: a stool
    back_height: float = _uniform(0.25, 0.60)
    back_width: float = _uniform(0.75, 1.0)  # fraction of the seat width
    back_thickness: float = _uniform(0.02, 0.06)
    back_tilt: float = _uniform(0.0, 20.0)
    back_bars: int = _integer(2, 5)  # slats or rails
    arms: bool = _flag(0.35)
    arm_height: float = _uniform(0.16, 0.28)  # above the seat
    arm_thickness: float = _uniform(0.03, 0.07)


@dataclass(frozen=True)
class TableParameters:
    """Table dimensions in metres; the top's longer side runs along x."""

    top_shape: str = _choice({"rect": 0.65, "round": 0.35})
    width: float = _uniform(0.6, 1.8)
    depth: float = _uniform(0.45, 1.0)  # fraction of the width; a round top ignores it
    height: float = _uniform(0.40, 0.80)
    top_thickness: float = _uniform(0.02, 0.08)
    base: str = _choice({"four_legs": 0.6, "pedestal": 0.25, "trestle": 0.15})
    leg_profile: str = _choice({"square": 0.5, "round": 0.5})
    leg_thickness: float = _uniform(0.03, 0.08)
    leg_inset: float = _uniform(0.0, 0.10)
    apron: bool = _flag(0.5)
    apron_height: float = _uniform(0.05, 0.12)
    shelf: bool = _flag(0.25)
    shelf_height: float = _uniform(0.12, 0.30)
    column_radius: float = _uniform(0.04, 0.10)
    foot: str = _choice({"disk": 0.5, "cross": 0.5})
    foot_radius: float = _uniform(0.25, 0.45)  # fraction of the smaller top side


@dataclass(frozen=True)
class AirplaneParameters:
    """Airplane proportions relative to a fuselage of length 1; angles in degrees."""

    fuselage_radius: float = _uniform(0.035, 0.07)
    nose_length: float = _uniform(0.06, 0.15)
    tail_cone_length: float = _uniform(0.15, 0.30)
    tail_upsweep: float = _uniform(0.0, 0.6)  # fraction of the fuselage radius
    wing_span: float = _uniform(0.6, 1.3)
    wing_root_chord: float = _uniform(0.12, 0.28)
    wing_taper: float = _uniform(0.2, 0.6)  # tip chord / root chord
    wing_sweep: float = _uniform(0.0, 40.0)
    wing_dihedral: float = _uniform(-3.0, 8.0)
    wing_thickness: float = _uniform(0.012, 0.03)
    wing_position: float = _uniform(0.30, 0.50)  # root leading edge, fraction of the length
    wing_mount: str = _choice({"low": 0.5, "mid": 0.2, "high": 0.3})
    tail: str = _choice({"conventional": 0.65, "t_tail": 0.35})
    fin_height: float = _uniform(0.12, 0.22)
    fin_chord: float = _uniform(0.12, 0.22)
    fin_sweep: float = _uniform(20.0, 50.0)
    stabilizer_span: float = _uniform(0.20, 0.45)
    stabilizer_chord: float = _uniform(0.06, 0.12)
    stabilizer_sweep: float = _uniform(10.0, 40.0)
    engines: int = _choice({0: 0.3, 2: 0.5, 4: 0.2})  # under the wings
    engine_radius: float = _uniform(0.025, 0.045)
    engine_length: float = _uniform(0.10, 0.20)


@dataclass(frozen=True)
class SofaParameters:
    """Sofa dimensions in metres; the seat runs along x."""

    width: float = _uniform(1.4, 2.4)
    depth: float = _uniform(0.75, 1.0)
    seat_height: float = _uniform(0.38, 0.48)
    cushions: int = _integer(1, 3)
    cushion_thickness: float = _uniform(0.08, 0.16)
    back_height: float = _uniform(0.30, 0.50)  # above the seat
    back_thickness: float = _uniform(0.12, 0.25)
    back_tilt: float = _uniform(0.0, 15.0)
    arm_style: str = _choice({"box": 0.5, "rolled": 0.35, "none": 0.15})
    arm_height: float = _uniform(0.12, 0.25)  # above the seat
    arm_width: float = _uniform(0.10, 0.25)
    leg_height: float = _uniform(0.0, 0.15)  # 0: the base stands on the floor
    chaise: bool = _flag(0.2)
    chaise_length: float = _uniform(0.5, 0.8)


@dataclass(frozen=True)
class LampParameters:
    """Lamp dimensions in metres."""

    kind: str = _choice({"table": 0.4, "floor": 0.3, "desk": 0.3})
    base_shape: str = _choice({"disk": 0.6, "square": 0.4})
    base_radius: float = _uniform(0.07, 0.16)
    base_height: float = _uniform(0.015, 0.05)
    stem_height: float = _uniform(0.25, 0.45)  # floor lamps are 3.5 times taller
    stem_radius: float = _uniform(0.008, 0.02)
    arm_length: float = _uniform(0.2, 0.4)  # desk lamps only
    arm_angle: float = _uniform(20.0, 60.0)  # desk lamps: above the horizontal
    shade_bottom_radius: float = _uniform(0.08, 0.22)
    shade_top_radius: float = _uniform(0.3, 1.0)  # fraction of the bottom radius
    shade_height: float = _uniform(0.10, 0.28)


Parameters = ChairParameters | TableParameters | AirplaneParameters | SofaParameters | LampParameters


# --------------------------------------------------------------------------------------------------
# Closed primitives. Sizes are full extents; points are (x, y, z).


def _box(center, extents) -> trimesh.Trimesh:
    return trimesh.creation.box(extents=extents, transform=trimesh.transformations.translation_matrix(center))


def _axis_transform(p0, p1) -> tuple[np.ndarray, float]:
    """Transform taking a primitive along +z centred at the origin onto the segment p0 -> p1."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    length = float(np.linalg.norm(p1 - p0))
    transform = trimesh.geometry.align_vectors([0.0, 0.0, 1.0], (p1 - p0) / length)
    transform[:3, 3] = (p0 + p1) / 2
    return transform, length


def _beam(p0, p1, thickness: float, profile: str = "square") -> trimesh.Trimesh:
    """A square bar or a round rod from p0 to p1."""
    transform, length = _axis_transform(p0, p1)
    if profile == "round":
        return trimesh.creation.cylinder(
            radius=thickness / 2, height=length, sections=16, transform=transform
        )
    return trimesh.creation.box(extents=[thickness, thickness, length], transform=transform)


def _capsule(p0, p1, radius: float) -> trimesh.Trimesh:
    transform, length = _axis_transform(p0, p1)
    capsule = trimesh.creation.capsule(height=length, radius=radius, count=[10, 10])
    # Older trimesh releases start the capsule at the origin rather than centring it.
    capsule.apply_translation(-capsule.bounds.mean(axis=0))
    capsule.apply_transform(transform)
    return capsule


def _disk(center, radius: float, height: float, sections: int = 32) -> trimesh.Trimesh:
    """A vertical cylinder (axis y) centred at ``center``."""
    center = np.asarray(center, float)
    half = np.array([0.0, height / 2, 0.0])
    return trimesh.creation.cylinder(radius=radius, segment=[center - half, center + half], sections=sections)


def _ellipsoid(center, radii) -> trimesh.Trimesh:
    sphere = trimesh.creation.icosphere(subdivisions=2)
    sphere.apply_scale(radii)
    sphere.apply_translation(center)
    return sphere


def _frustum(p0, p1, r0: float, r1: float, sections: int = 24) -> trimesh.Trimesh:
    """A truncated cone from a circle of radius r0 at p0 to one of radius r1 at p1."""
    transform, length = _axis_transform(p0, p1)
    angles = np.linspace(0, 2 * np.pi, sections, endpoint=False)
    circle = np.stack([np.cos(angles), np.sin(angles), np.zeros_like(angles)], axis=1)
    points = np.concatenate([circle * r0 - [0, 0, length / 2], circle * r1 + [0, 0, length / 2]])
    hull = trimesh.convex.convex_hull(points)
    hull.apply_transform(transform)
    return hull


def _wing(root_leading_edge, root_chord, tip_leading_edge, tip_chord, root_thickness, tip_thickness):
    """A tapered, swept slab: the convex hull of a root and a tip section, chords along +z."""
    points = []
    for leading_edge, chord, thickness in (
        (root_leading_edge, root_chord, root_thickness),
        (tip_leading_edge, tip_chord, tip_thickness),
    ):
        for dz in (0.0, chord):
            for dy in (-thickness / 2, thickness / 2):
                points.append(np.asarray(leading_edge, float) + [0.0, dy, dz])
    return trimesh.convex.convex_hull(np.array(points))


def _fin(root_leading_edge, root_chord, tip_leading_edge, tip_chord, thickness):
    """A vertical tapered slab in the y-z plane (a tail fin): like :func:`_wing`, standing up."""
    points = []
    for leading_edge, chord in ((root_leading_edge, root_chord), (tip_leading_edge, tip_chord)):
        for dz in (0.0, chord):
            for dx in (-thickness / 2, thickness / 2):
                points.append(np.asarray(leading_edge, float) + [dx, 0.0, dz])
    return trimesh.convex.convex_hull(np.array(points))


# --------------------------------------------------------------------------------------------------
# Category builders: each returns its parts; y = 0 is the floor, the front faces -z.


def _chair_parts(p: ChairParameters) -> list[trimesh.Trimesh]:
    parts = []
    seat_top, seat_bottom = p.seat_height, p.seat_height - p.seat_thickness
    round_seat = p.seat_shape == "round"
    width = p.seat_width
    depth = p.seat_width if round_seat else p.seat_depth
    if round_seat:
        parts.append(_disk([0, seat_top - p.seat_thickness / 2, 0], width / 2, p.seat_thickness))
    else:
        parts.append(_box([0, seat_top - p.seat_thickness / 2, 0], [width, p.seat_thickness, depth]))

    # Legs start half-way into the seat so the parts overlap, like modelled furniture does.
    leg_top_y = seat_top - p.seat_thickness / 2
    if p.base == "star":
        hub_y = 0.09
        parts.append(_disk([0, (hub_y + seat_bottom) / 2, 0], p.column_radius, seat_bottom - hub_y + 0.02))
        parts.append(_disk([0, seat_bottom - 0.02, 0], p.column_radius * 2.5, 0.04))  # tilt mechanism
        parts.append(_disk([0, hub_y, 0], p.column_radius * 1.6, 0.05))
        for k in range(p.star_arms):
            angle = 2 * np.pi * k / p.star_arms + np.pi / 2
            direction = np.array([np.cos(angle), 0.0, np.sin(angle)])
            end = direction * p.star_radius + [0, 0.06, 0]
            parts.append(_beam([0, hub_y, 0], end, 0.035, profile=p.leg_profile))
            parts.append(_ellipsoid(end - [0, 0.035, 0], [0.025, 0.025, 0.025]))  # caster
    else:
        if p.base == "three_legs":
            radius = min(width, depth) / 2 - p.leg_inset - p.leg_thickness / 2
            angles = np.pi / 2 + 2 * np.pi * np.arange(3) / 3  # one leg at the back, two at the front
            tops = np.stack([radius * np.cos(angles), np.zeros(3), radius * np.sin(angles)], axis=1)
        elif round_seat:
            radius = width / 2 - p.leg_inset - p.leg_thickness / 2
            angles = np.radians([225, 135, 315, 45])  # same corner order as a rectangular seat's
            tops = np.stack([radius * np.cos(angles), np.zeros(4), radius * np.sin(angles)], axis=1)
        else:
            half = np.array([width, depth]) / 2 - p.leg_inset - p.leg_thickness / 2
            tops = np.array([[sx * half[0], 0.0, sz * half[1]] for sx in (-1, 1) for sz in (-1, 1)])
        tops[:, 1] = leg_top_y
        # Splay pushes each foot outwards, away from the seat centre.
        outwards = tops * [1.0, 0.0, 1.0] / np.linalg.norm(tops[:, [0, 2]], axis=1, keepdims=True)
        feet = tops + outwards * np.tan(np.radians(p.leg_splay)) * leg_top_y
        feet[:, 1] = 0.0
        for top, foot in zip(tops, feet):
            parts.append(_beam(foot, top, p.leg_thickness, p.leg_profile))
        if p.stretchers and p.base == "four_legs":
            t = 0.25  # stretchers a quarter of the way up the legs
            joints = feet + (tops - feet) * t
            for i, j in ((0, 1), (2, 3), (0, 2), (1, 3)):
                parts.append(_beam(joints[i], joints[j], p.leg_thickness * 0.6, p.leg_profile))

    if p.back_style == "none":  # a stool
        return parts

    back_width = width * p.back_width
    # The back stands on the rear edge of the seat (for a round seat, where the back's posts meet it).
    back_z = depth / 2 - p.back_thickness / 2
    if round_seat:
        back_z = np.sqrt(max((width / 2) ** 2 - (back_width / 2) ** 2, 0.0)) - p.back_thickness / 2
        back_z = max(back_z, width * 0.25)
    tilt = np.radians(p.back_tilt)
    # Back parts are built upright in a local frame (y from 0 up, plane z = 0) and then tilted
    # backwards (towards +z) about the rear edge of the seat top.
    back = []
    bottom, top, thick = -p.seat_thickness / 2, p.back_height, p.back_thickness
    if p.back_style == "solid":
        back.append(_box([0, (bottom + top) / 2, 0], [back_width, top - bottom, thick]))
    else:
        post = max(thick, 0.03)
        for sx in (-1, 1):
            x = sx * (back_width - post) / 2
            back.append(_box([x, (bottom + top) / 2, 0], [post, top - bottom, thick]))
        rail_height = min(0.08, 0.25 * p.back_height)
        back.append(_box([0, top - rail_height / 2, 0], [back_width, rail_height, thick]))
        if p.back_style == "slats":
            inner = back_width - 2 * post
            slat_width = inner / (2 * p.back_bars + 1)
            for k in range(p.back_bars):
                x = -inner / 2 + slat_width * (2 * k + 1.5)
                back.append(_box([x, (bottom + top) / 2, 0], [slat_width, top - bottom, thick * 0.7]))
        else:  # horizontal rails, evenly spaced between the seat and the top rail
            for y in np.linspace(0.0, top - rail_height, p.back_bars + 1, endpoint=False)[1:]:
                back.append(_box([0, y, 0], [back_width, rail_height * 0.5, thick * 0.7]))
    back_transform = trimesh.transformations.translation_matrix([0, seat_top, back_z]) @ (
        trimesh.transformations.rotation_matrix(tilt, [1, 0, 0])
    )
    for part in back:
        part.apply_transform(back_transform)
    parts += back

    if p.arms:
        arm_height = min(p.arm_height, 0.75 * p.back_height)  # arms stay below the top of the back
        arm_y = seat_top + arm_height
        arm_back_z = back_z + arm_height * np.tan(tilt)
        arm_front_z = -depth / 2 + 0.04
        for sx in (-1, 1):
            x = sx * (width / 2 - p.arm_thickness / 2)
            if round_seat:
                x = sx * back_width / 2
            parts.append(_beam([x, arm_y, arm_front_z - 0.03], [x, arm_y, arm_back_z], p.arm_thickness))
            parts.append(_beam([x, leg_top_y, arm_front_z], [x, arm_y, arm_front_z], p.arm_thickness * 0.8))
    return parts


def _table_parts(p: TableParameters) -> list[trimesh.Trimesh]:
    parts = []
    round_top = p.top_shape == "round"
    width = p.width
    depth = p.width if round_top else p.width * p.depth
    if round_top:  # a round top of this width would dwarf a dining table; keep it room-sized
        width = depth = min(p.width, 1.4)
    top_y = p.height - p.top_thickness / 2
    if round_top:
        parts.append(_disk([0, top_y, 0], width / 2, p.top_thickness, sections=48))
    else:
        parts.append(_box([0, top_y, 0], [width, p.top_thickness, depth]))
    under_top = p.height - p.top_thickness

    if p.base == "four_legs":
        if round_top:
            radius = width / 2 * 0.7 - p.leg_inset
            angles = np.pi / 4 + np.pi / 2 * np.arange(4)
            corners = np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)
        else:
            half = np.array([width, depth]) / 2 - p.leg_inset - p.leg_thickness / 2
            corners = np.array([[sx * half[0], sz * half[1]] for sx in (-1, 1) for sz in (-1, 1)])
        for x, z in corners:
            top = [x, p.height - p.top_thickness / 2, z]
            parts.append(_beam([x, 0, z], top, p.leg_thickness, p.leg_profile))
        if p.apron and not round_top:
            y = under_top - p.apron_height / 2
            hx, hz = np.abs(corners[0])
            parts.append(_box([0, y, -hz], [2 * hx, p.apron_height, p.leg_thickness * 0.5]))
            parts.append(_box([0, y, hz], [2 * hx, p.apron_height, p.leg_thickness * 0.5]))
            parts.append(_box([-hx, y, 0], [p.leg_thickness * 0.5, p.apron_height, 2 * hz]))
            parts.append(_box([hx, y, 0], [p.leg_thickness * 0.5, p.apron_height, 2 * hz]))
        if p.shelf:
            y = min(p.shelf_height, 0.5 * p.height)
            if round_top:
                parts.append(_disk([0, y, 0], radius + p.leg_thickness / 2, 0.02, sections=48))
            else:
                hx, hz = np.abs(corners[0]) + p.leg_thickness / 2
                parts.append(_box([0, y, 0], [2 * hx, 0.02, 2 * hz]))
    elif p.base == "pedestal":
        parts.append(_disk([0, under_top / 2 + 0.01, 0], p.column_radius, under_top + 0.02))
        foot = p.foot_radius * min(width, depth)
        if p.foot == "disk":
            parts.append(_frustum([0, 0, 0], [0, 0.05, 0], foot, foot * 0.8, sections=48))
        else:
            for k in range(4):
                angle = np.pi / 4 + np.pi / 2 * k
                end = [foot * np.cos(angle), 0.03, foot * np.sin(angle)]
                parts.append(_beam([0, 0.05, 0], end, 0.05, p.leg_profile))
        parts.append(_disk([0, under_top - 0.01, 0], p.column_radius * 1.8, 0.03))  # top bracket
    else:  # trestle: two solid end panels joined by a stretcher
        # Under a round top the panels move inwards so that their corners stay beneath it.
        panel_depth = depth * (0.55 if round_top else 0.75)
        x = width / 2 * 0.55 if round_top else width / 2 - p.leg_inset - 0.05
        for sx in (-1, 1):
            panel = [p.leg_thickness, under_top + 0.02, panel_depth]
            parts.append(_box([sx * x, under_top / 2 + 0.01, 0], panel))
            parts.append(_box([sx * x, 0.02, 0], [p.leg_thickness * 2, 0.04, panel_depth * 1.05]))  # foot
        parts.append(_beam([-x, under_top * 0.35, 0], [x, under_top * 0.35, 0], 0.05, p.leg_profile))
    return parts


def _airplane_parts(p: AirplaneParameters) -> list[trimesh.Trimesh]:
    # The fuselage runs along z from the nose tip at z = -0.5 to the tail at z = +0.5, axis at y = 0.
    parts = []
    r = p.fuselage_radius
    nose_z = -0.5 + p.nose_length
    tail_z = 0.5 - p.tail_cone_length
    parts.append(_frustum([0, 0, nose_z], [0, 0, tail_z], r, r, sections=32))
    parts.append(_ellipsoid([0, 0, nose_z], [r, r, p.nose_length]))
    tail_tip = np.array([0.0, p.tail_upsweep * r, 0.5])
    parts.append(_frustum([0, 0, tail_z - 0.01], tail_tip, r, r * 0.25, sections=32))

    mount_y = {"low": -0.55 * r, "mid": 0.0, "high": 0.6 * r}[p.wing_mount]
    root_le = np.array([0.0, mount_y, -0.5 + p.wing_position])
    half_span = p.wing_span / 2
    tip_chord = p.wing_root_chord * p.wing_taper
    # Long swept wings mounted far back would reach past the tail: the tips stay ahead of it.
    sweep_offset = min(half_span * np.tan(np.radians(p.wing_sweep)), 0.8 - p.wing_position - tip_chord)
    for sx in (-1, 1):
        tip_le = root_le + [sx * half_span, half_span * np.tan(np.radians(p.wing_dihedral)), sweep_offset]
        thickness = p.wing_thickness
        parts.append(_wing(root_le, p.wing_root_chord, tip_le, tip_chord, thickness, thickness * 0.5))

    if p.engines:
        stations = [0.35] if p.engines == 2 else [0.3, 0.6]  # fractions of the half span
        for fraction in stations:
            for sx in (-1, 1):
                x = sx * fraction * half_span
                le = root_le + [x, abs(x) * np.tan(np.radians(p.wing_dihedral)), fraction * sweep_offset]
                center = le + [0.0, -p.wing_thickness / 2 - p.engine_radius * 1.5, 0.0]
                front = center - [0, 0, p.engine_length * 0.6]
                back = center + [0, 0, p.engine_length * 0.4]
                parts.append(_frustum(front, back, p.engine_radius, p.engine_radius * 0.75))
                parts.append(_box(le + [0, -p.engine_radius * 0.8, p.engine_length * 0.1],
                                  [0.008, p.engine_radius * 1.6, p.engine_length * 0.5]))  # pylon

    # Tail surfaces. The fin's root sits on top of the fuselage ahead of the tail tip.
    fin_root_le = np.array([0.0, r * 0.5, 0.5 - p.fin_chord - 0.02])
    fin_tip_le = fin_root_le + [0.0, p.fin_height, p.fin_height * np.tan(np.radians(p.fin_sweep))]
    fin_tip_chord = p.fin_chord * 0.6
    parts.append(_fin(fin_root_le, p.fin_chord, fin_tip_le, fin_tip_chord, 0.012))
    if p.tail == "t_tail":
        stab_root_le = fin_tip_le + [0.0, 0.0, fin_tip_chord - p.stabilizer_chord]
    else:
        stab_root_le = np.array([0.0, tail_tip[1] * 0.5, 0.5 - p.stabilizer_chord - 0.04])
    for sx in (-1, 1):
        half = p.stabilizer_span / 2
        stab_tip_le = stab_root_le + [sx * half, 0.0, half * np.tan(np.radians(p.stabilizer_sweep))]
        chord = p.stabilizer_chord
        parts.append(_wing(stab_root_le, chord, stab_tip_le, chord * 0.5, 0.01, 0.006))
    return parts


def _sofa_parts(p: SofaParameters) -> list[trimesh.Trimesh]:
    parts = []
    base_top = p.seat_height - p.cushion_thickness
    arm_width = 0.0 if p.arm_style == "none" else p.arm_width
    inner = p.width - 2 * arm_width  # the seat between the arms
    seat_depth = p.depth - p.back_thickness
    seat_z = -p.back_thickness / 2  # seat centre: in front of the back
    parts.append(_box([0, (p.leg_height + base_top) / 2, 0], [p.width, base_top - p.leg_height, p.depth]))
    cushion_width = inner / p.cushions
    for k in range(p.cushions):
        x = -inner / 2 + cushion_width * (k + 0.5)
        parts.append(_box([x, p.seat_height - p.cushion_thickness / 2, seat_z],
                          [cushion_width * 0.98, p.cushion_thickness, seat_depth]))
    if p.chaise:  # an L-shaped sectional: the seat runs forward (-z) at the +x end
        length = p.chaise_length
        x = inner / 2 - cushion_width / 2
        z = -p.depth / 2 - length / 2
        parts.append(_box([x + arm_width / 2, (p.leg_height + base_top) / 2, z],
                          [cushion_width + arm_width, base_top - p.leg_height, length]))
        parts.append(_box([x, p.seat_height - p.cushion_thickness / 2, z],
                          [cushion_width * 0.98, p.cushion_thickness, length]))

    back_height = p.back_height + p.cushion_thickness
    back = _box([0, back_height / 2, 0], [p.width, back_height, p.back_thickness])
    tilt = trimesh.transformations.rotation_matrix(np.radians(p.back_tilt), [1, 0, 0])
    back.apply_transform(trimesh.transformations.translation_matrix(
        [0, base_top, p.depth / 2 - p.back_thickness / 2]) @ tilt)
    parts.append(back)

    if p.arm_style != "none":
        arm_top = p.seat_height + p.arm_height
        for sx in (-1, 1):
            x = sx * (p.width - arm_width) / 2
            arm = [arm_width, arm_top - p.leg_height, p.depth]
            parts.append(_box([x, (p.leg_height + arm_top) / 2, 0], arm))
            if p.arm_style == "rolled":
                parts.append(_capsule([x, arm_top, -p.depth / 2 + arm_width * 0.55],
                                      [x, arm_top, p.depth / 2 - arm_width * 0.55], arm_width * 0.55))
    if p.leg_height > 0:
        half = np.array([p.width / 2 - 0.06, p.depth / 2 - 0.06])
        for sx in (-1, 1):
            for sz in (-1, 1):
                foot = np.array([sx * half[0], 0.0, sz * half[1]])
                top = foot + [0.0, p.leg_height + 0.02, 0.0]  # into the base
                parts.append(_frustum(foot, top, 0.02, 0.03, sections=12))
    return parts


def _lamp_parts(p: LampParameters) -> list[trimesh.Trimesh]:
    parts = []
    if p.base_shape == "disk":
        top = [0, p.base_height, 0]
        parts.append(_frustum([0, 0, 0], top, p.base_radius, p.base_radius * 0.85, sections=40))
    else:
        side = p.base_radius * 1.7
        parts.append(_box([0, p.base_height / 2, 0], [side, p.base_height, side]))
    stem_height = p.stem_height * (3.5 if p.kind == "floor" else 1.0)
    stem_top = np.array([0.0, p.base_height + stem_height, 0.0])
    parts.append(_beam([0, p.base_height - 0.005, 0], stem_top, 2 * p.stem_radius, "round"))
    shade_top_radius = p.shade_bottom_radius * p.shade_top_radius

    if p.kind == "desk":
        # An angled arm reaching forwards (-z) with the shade at its end pointing down and forwards.
        angle = np.radians(p.arm_angle)
        elbow = stem_top
        head = elbow + p.arm_length * np.array([0.0, np.sin(angle), -np.cos(angle)])
        parts.append(_ellipsoid(elbow, [p.stem_radius * 1.8] * 3))
        parts.append(_beam(elbow, head, 2 * p.stem_radius, "round"))
        axis = np.array([0.0, -np.cos(np.radians(30)), -np.sin(np.radians(30))])  # shade opening
        # Desk lamp shades are smaller than those of table and floor lamps.
        radius, height = p.shade_bottom_radius * 0.5, p.shade_height * 0.6
        parts.append(_frustum(head - axis * 0.02, head + axis * height, shade_top_radius * 0.5, radius))
    else:
        # An upright drum/cone shade around the top of the stem, with a bulb inside.
        shade_bottom = stem_top - [0, p.shade_height * 0.6, 0]
        parts.append(_frustum(shade_bottom, shade_bottom + [0, p.shade_height, 0],
                              p.shade_bottom_radius, shade_top_radius, sections=40))
        parts.append(_ellipsoid(stem_top - [0, p.shade_height * 0.1, 0], [0.03, 0.04, 0.03]))
    return parts


_BUILDERS = {
    AirplaneParameters: _airplane_parts,
    ChairParameters: _chair_parts,
    LampParameters: _lamp_parts,
    SofaParameters: _sofa_parts,
    TableParameters: _table_parts,
}
_PARAMETERS = {
    "airplane": AirplaneParameters,
    "chair": ChairParameters,
    "lamp": LampParameters,
    "sofa": SofaParameters,
    "table": TableParameters,
}


# --------------------------------------------------------------------------------------------------
# Public API


def _check_category(category: str) -> type:
    if category not in _PARAMETERS:
        raise ValueError(
            f"unknown synthetic category {category!r}; choose one of {sorted(_PARAMETERS)}"
        )
    return _PARAMETERS[category]


def parameter_specs(category: str) -> dict[str, dict]:
    """How each parameter of ``category`` is drawn.

    Returns:
        ``{name: spec}`` where spec is one of ``{"uniform": (low, high)}``, ``{"integer": (low, high)}``
        (both ends included), ``{"choice": {option: weight}}`` or ``{"flag": probability}``.
    """
    return {f.name: dict(f.metadata) for f in dataclasses.fields(_check_category(category))}


def sample_parameters(category: str, seed: Seed) -> Parameters:
    """Draw the random parameters of one shape.

    Args:
        category: one of :data:`CATEGORIES`.
        seed: anything ``numpy.random.default_rng`` accepts (an int or a sequence of ints).

    Returns:
        A frozen dataclass (e.g. :class:`ChairParameters`); the same seed gives the same parameters.
    """
    cls = _check_category(category)
    rng = np.random.default_rng(seed)
    # Fields are drawn in declaration order so a seed always maps to the same shape.
    return cls(**{f.name: _draw(f.metadata, rng) for f in dataclasses.fields(cls)})


def build_shape(params: Parameters) -> trimesh.Trimesh:
    """Build the normalised mesh of a shape from its parameters.

    Returns:
        A mesh whose connected bodies are each closed (watertight) but overlap one another, with
        bounding-box centre at the origin and bounding-box diagonal 1, y up, front towards -z.
    """
    if type(params) not in _BUILDERS:
        raise TypeError(
            f"expected one of {[cls.__name__ for cls in _BUILDERS]}, got {type(params).__name__}; "
            "make parameters with sample_parameters()"
        )
    parts = _BUILDERS[type(params)](params)
    # Plain concatenation, no vertex merging: parts that touch must stay separate closed bodies.
    return normalise(trimesh.util.concatenate(parts))


def generate_shape(category: str, seed: Seed) -> trimesh.Trimesh:
    """A random normalised shape of ``category``; identical for identical seeds.

    Example:
        >>> mesh = generate_shape("chair", seed=7)
        >>> bool(abs(np.linalg.norm(mesh.extents) - 1) < 1e-9)
        True
    """
    return build_shape(sample_parameters(category, seed))


def generate_dataset(category: str, n: int, seed: int = 0) -> list[tuple[str, trimesh.Trimesh]]:
    """``n`` shapes named ``synthetic_<category>_0000`` ... in a stable order.

    Shape ``i`` is ``generate_shape(category, seed=(seed, i))``, so it does not depend on ``n``:
    a larger dataset with the same seed extends a smaller one.

    Returns:
        ``[(name, mesh), ...]`` of length ``n``.
    """
    _check_category(category)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return [(f"synthetic_{category}_{i:04d}", generate_shape(category, (seed, i))) for i in range(n)]

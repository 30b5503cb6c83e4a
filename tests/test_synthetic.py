"""data_prep.synthetic: procedural shapes that go through the same data path as ShapeNet meshes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh

from data_prep.synthetic import (
    CATEGORIES,
    ChairParameters,
    build_shape,
    generate_dataset,
    generate_shape,
    parameter_specs,
    sample_parameters,
)

SHAPENET = Path(__file__).parent / "data" / "shapenet_v2_sample"
REAL_CHAIRS = sorted((SHAPENET / "03001627").glob("*/models/model_normalized.obj"))
REAL_AIRPLANES = sorted((SHAPENET / "02691156").glob("*/models/model_normalized.obj"))


def test_categories_use_shapenet_synset_ids():
    assert CATEGORIES["airplane"] == "02691156"
    assert CATEGORIES["chair"] == "03001627"
    assert CATEGORIES["table"] == "04379243"
    assert CATEGORIES["sofa"] == "04256520"
    assert CATEGORIES["lamp"] == "03636649"


@pytest.mark.parametrize("category", sorted(CATEGORIES))
def test_same_seed_gives_the_same_mesh(category):
    a, b = generate_shape(category, seed=11), generate_shape(category, seed=11)
    np.testing.assert_array_equal(a.vertices, b.vertices)
    np.testing.assert_array_equal(a.faces, b.faces)


@pytest.mark.parametrize("category", sorted(CATEGORIES))
def test_different_seeds_give_different_shapes(category):
    meshes = [generate_shape(category, seed) for seed in range(6)]
    extents = np.array([mesh.extents for mesh in meshes])
    # Proportions differ pairwise, not just vertex noise.
    distances = np.linalg.norm(extents[:, None] - extents[None], axis=2)
    assert np.all(distances[np.triu_indices(len(meshes), k=1)] > 1e-3)


@pytest.mark.parametrize("category", sorted(CATEGORIES))
def test_parameter_ranges_are_actually_used(category):
    samples = [sample_parameters(category, seed) for seed in range(400)]
    for name, spec in parameter_specs(category).items():
        values = [getattr(sample, name) for sample in samples]
        if "uniform" in spec:
            low, high = spec["uniform"]
            assert low <= min(values) and max(values) <= high, name
            assert max(values) - min(values) > 0.9 * (high - low), name
        elif "integer" in spec:
            low, high = spec["integer"]
            assert set(values) == set(range(low, high + 1)), name
        elif "choice" in spec:
            assert set(values) == set(spec["choice"]), name
        else:
            assert set(values) == {False, True}, name


def test_chair_variety_covers_the_structural_options():
    samples = [sample_parameters("chair", seed) for seed in range(200)]
    assert {s.base for s in samples} == {"four_legs", "three_legs", "star"}
    assert {s.back_style for s in samples} == {"solid", "slats", "rails", "none"}
    assert {s.seat_shape for s in samples} == {"rect", "round"}
    assert any(s.arms for s in samples) and not all(s.arms for s in samples)


@pytest.mark.parametrize("category", sorted(CATEGORIES))
def test_every_part_is_closed_and_parts_overlap_unmerged(category):
    for seed in range(6):
        mesh = generate_shape(category, seed)
        bodies = mesh.split(only_watertight=False)
        assert len(bodies) > 1  # a union of primitives, like ShapeNet's multi-part meshes
        for body in bodies:
            assert body.is_watertight, f"{category} seed {seed}: a part is not closed"


@pytest.mark.parametrize("category", sorted(CATEGORIES))
def test_meshes_are_normalised(category):
    for seed in range(4):
        mesh = generate_shape(category, seed)
        np.testing.assert_allclose(mesh.bounds.mean(axis=0), 0.0, atol=1e-12)
        assert np.linalg.norm(mesh.extents) == pytest.approx(1.0, abs=1e-12)
        assert np.all(np.abs(mesh.vertices) <= 0.5)


def _mean_z_of_top(mesh: trimesh.Trimesh, fraction: float = 0.05) -> float:
    y = mesh.vertices[:, 1]
    top = y > y.max() - fraction * np.ptp(y)
    return float(mesh.vertices[top, 2].mean())


def _z_of_highest_point(mesh: trimesh.Trimesh) -> float:
    return float(mesh.vertices[np.argmax(mesh.vertices[:, 1]), 2])


def test_chairs_are_oriented_like_shapenet_v2():
    """y up and the front towards -z: the top of the backrest lies at +z, as on real chairs."""
    for path in REAL_CHAIRS:
        assert _mean_z_of_top(trimesh.load(path, force="mesh")) > 0.05
    for seed in range(30):
        if sample_parameters("chair", seed).back_style != "none":
            assert _mean_z_of_top(generate_shape("chair", seed)) > 0.02, seed


def test_airplanes_are_oriented_like_shapenet_v2():
    """Nose towards -z: the tail fin, the highest point, is at the back (+z), as on the real one."""
    for path in REAL_AIRPLANES:
        assert _z_of_highest_point(trimesh.load(path, force="mesh")) > 0.2
    for seed in range(30):
        assert _z_of_highest_point(generate_shape("airplane", seed)) > 0.1, seed


def test_generate_dataset_names_and_extends_stably():
    small, large = generate_dataset("table", 2, seed=5), generate_dataset("table", 3, seed=5)
    assert [name for name, _ in large] == [f"synthetic_table_000{i}" for i in range(3)]
    for (_, a), (_, b) in zip(small, large):
        np.testing.assert_array_equal(a.vertices, b.vertices)
    np.testing.assert_array_equal(large[2][1].vertices, generate_shape("table", (5, 2)).vertices)
    other_seed = generate_dataset("table", 1, seed=6)
    assert not np.array_equal(other_seed[0][1].vertices, small[0][1].vertices)
    assert generate_dataset("table", 0) == []


def test_parameters_rebuild_the_same_shape():
    params = sample_parameters("chair", 3)
    assert isinstance(params, ChairParameters)
    np.testing.assert_array_equal(build_shape(params).vertices, generate_shape("chair", 3).vertices)
    # Parameters can be edited to build a specific variant.
    assert params.back_style != "none"
    stool = build_shape(ChairParameters(**{**vars(params), "back_style": "none"}))
    assert len(stool.faces) < len(build_shape(params).faces)


def test_unknown_category_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"'sofa'.*'table'") as info:
        generate_shape("bicycle", 0)
    assert "bicycle" in str(info.value)
    with pytest.raises(ValueError, match="airplane"):
        generate_dataset("bicycle", 3)
    with pytest.raises(ValueError, match="n must be"):
        generate_dataset("chair", -1)
    with pytest.raises(TypeError, match="sample_parameters"):
        build_shape({"seat_width": 0.5})

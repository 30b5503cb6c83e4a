"""imnet.mesh: reading meshes with clear errors, the one normalisation, and axis conventions."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import trimesh

from imnet.mesh import (
    AXES,
    MeshError,
    axes_rotation,
    check_mesh,
    denormalise,
    from_shapenet_axes,
    load_mesh,
    normalisation,
    normalise,
    save_mesh,
    to_shapenet_axes,
)

CHAIR = Path(__file__).parent / "data/shapenet_v2_sample/03001627/353bbd3b916426d24502f857a1cf320e/models/model_normalized.obj"


def test_load_mesh_reads_a_shapenet_obj_as_stored():
    mesh = load_mesh(CHAIR)
    raw = trimesh.load(CHAIR, force="mesh", process=False, skip_materials=True)
    np.testing.assert_array_equal(mesh.vertices, raw.vertices)  # no merging, no reordering
    assert len(mesh.faces) == len(raw.faces) > 100


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("garbage.obj", b"\x00\x01 this is not a mesh \xff" * 10, "garbage.obj: "),
        ("empty.obj", b"", "empty.obj: mesh has no triangles"),
        ("points.ply", b"ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n"
         b"property float z\nend_header\n0 0 0\n1 0 0\n0 1 0\n", "points.ply: mesh has no triangles"),
        ("nan.obj", b"v 0 0 0\nv 1 0 nan\nv 0 1 0\nf 1 2 3\n", "nan.obj has 1 vertices with NaN"),
        ("flat.obj", b"v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n", "flat.obj: mesh is degenerate"),
    ],
)
def test_load_mesh_refuses_unusable_files_with_the_reason(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(MeshError, match=message.replace(".", r"\.")):
        load_mesh(path)


def test_load_mesh_refuses_missing_and_too_large_meshes(tmp_path):
    with pytest.raises(MeshError, match="no such mesh file"):
        load_mesh(tmp_path / "missing.obj")
    with pytest.raises(MeshError, match="more than max_faces=10"):
        load_mesh(CHAIR, max_faces=10)


def test_save_mesh_round_trips_every_format_atomically(tmp_path):
    box = trimesh.creation.box(extents=(0.2, 0.4, 0.6))
    for suffix in ("obj", "ply", "off", "stl", "glb"):
        path = save_mesh(box, tmp_path / f"box.{suffix}")
        np.testing.assert_allclose(load_mesh(path).bounds, box.bounds, atol=1e-6)
    assert not list(tmp_path.glob(".*tmp"))
    with pytest.raises(MeshError, match="cannot write .xyz"):
        save_mesh(box, tmp_path / "box.xyz")


def test_check_mesh_is_the_one_argument_check():
    with pytest.raises(MeshError, match="must be a trimesh.Trimesh, got Scene.*force='mesh'"):
        check_mesh(trimesh.Scene())
    with pytest.raises(MeshError, match="the input has no faces"):
        check_mesh(trimesh.Trimesh(), name="the input")
    assert check_mesh(trimesh.Trimesh(), surface=False).is_empty  # type only


def test_normalisation_is_bounding_box_centre_and_diagonal():
    centre, scale = normalisation(np.array([[0.0, 0.0, 0.0], [2.0, 4.0, 4.0]]))
    np.testing.assert_allclose(centre, [1, 2, 2])
    assert scale == pytest.approx(6.0)
    with pytest.raises(MeshError, match="zero"):
        normalisation(np.zeros((2, 3)))


def test_normalise_then_denormalise_is_the_identity():
    mesh = load_mesh(CHAIR).apply_scale(3.0).apply_translation([1.0, -2.0, 0.5])
    original = mesh.vertices.copy()
    centre, scale = normalisation(mesh.bounds)
    normalise(mesh, centre, scale)
    assert np.linalg.norm(mesh.bounds[1] - mesh.bounds[0]) == pytest.approx(1.0)
    np.testing.assert_allclose(mesh.bounds.mean(axis=0), 0.0, atol=1e-12)
    assert np.abs(mesh.vertices).max() <= 0.5
    np.testing.assert_allclose(denormalise(mesh, centre, scale).vertices, original, atol=1e-12)


@pytest.mark.parametrize("up, front", [(u, f) for u, f in itertools.product(AXES, AXES) if u[1] != f[1]])
def test_axes_rotation_takes_up_to_y_and_front_to_minus_z(up, front):
    rotation = axes_rotation(up, front)
    axis = {name: np.eye(3)["xyz".index(name[1])] * (1 if name[0] == "+" else -1) for name in AXES}
    np.testing.assert_array_equal(rotation @ axis[up], [0, 1, 0])
    np.testing.assert_array_equal(rotation @ axis[front], [0, 0, -1])
    assert np.linalg.det(rotation) == pytest.approx(1.0)  # a turn, never a mirror image


def test_shapenet_v1_axes_are_the_quarter_turn_about_y():
    np.testing.assert_allclose(axes_rotation("+y", "+x"), trimesh.transformations.rotation_matrix(np.pi / 2, [0, 1, 0])[:3, :3], atol=1e-15)
    np.testing.assert_array_equal(axes_rotation(), np.eye(3))


def test_impossible_axes_are_refused():
    with pytest.raises(ValueError, match="different axes"):
        axes_rotation("+z", "-z")
    with pytest.raises(ValueError, match="up must be one of"):
        axes_rotation("z", "+x")


def test_turning_there_and_back_is_exact():
    mesh = load_mesh(CHAIR)
    original = mesh.vertices.copy()
    to_shapenet_axes(mesh, "+z", "+x")
    assert not np.array_equal(mesh.vertices, original)
    np.testing.assert_array_equal(from_shapenet_axes(mesh, "+z", "+x").vertices, original)


def test_negative_axes_can_follow_their_option_on_the_command_line():
    from imnet.mesh import axis_argv

    assert axis_argv(["meshes", "in", "--up", "-y", "--front", "-z", "--out", "o"]) == [
        "meshes", "in", "--up=-y", "--front=-z", "--out", "o"]
    assert axis_argv(["--front=-x", "--out", "-z"]) == ["--front=-x", "--out", "-z"]  # other options untouched


TETRAHEDRON_OFF = b"OFF\n4 4 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 2\n3 0 1 3\n3 0 2 3\n3 1 2 3\n"
TETRAHEDRON_OBJ = b"v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\nf 1 3 4\nf 2 3 4\n"


@pytest.mark.parametrize("name, content", [
    ("latin1.off", b"OFF\n# mod\xe8le de chaise, \xa9 atelier\n" + TETRAHEDRON_OFF[4:]),
    ("latin1.obj", b"# export\xe9 par CAO\n" + TETRAHEDRON_OBJ),
])
def test_text_meshes_with_a_latin1_comment_are_read(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    mesh = load_mesh(path)  # needs charset_normalizer (pinned in requirements.txt): the bytes are not UTF-8
    assert len(mesh.faces) == 4 and mesh.bounds.tolist() == [[0, 0, 0], [1, 1, 1]]


def test_garbage_text_meshes_get_their_own_reason_and_a_missing_package_is_named(tmp_path, monkeypatch):
    garbage = tmp_path / "garbage.off"
    garbage.write_bytes(bytes(range(256)) * 8)
    latin1 = tmp_path / "latin1.off"
    latin1.write_bytes(b"OFF\n# mod\xe8le\n" + TETRAHEDRON_OFF[4:])
    monkeypatch.setitem(__import__("sys").modules, "charset_normalizer", None)  # as if it were not installed
    with pytest.raises(MeshError, match=r"garbage\.off: not a \.off mesh \(the file holds binary data") as error:
        load_mesh(garbage)
    assert "charset_normalizer" not in str(error.value)
    with pytest.raises(MeshError, match="latin1.off: reading it needs the Python package charset_normalizer"):
        load_mesh(latin1)


def test_normalisation_of_extreme_coordinates_neither_overflows_nor_lies():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        centre, scale = normalisation(np.array([[-1e300, -1e300, 0.0], [1e300, 1e300, 0.0]]))
        assert scale == pytest.approx(2e300 * np.sqrt(2)) and centre.tolist() == [0, 0, 0]
        assert normalisation(np.array([[0.0] * 3, [3e-300, 4e-300, 0.0]]))[1] == pytest.approx(5e-300)
        with pytest.raises(MeshError, match="too large to normalise: its bounding-box diagonal exceeds"):
            normalisation(np.array([[-1.7e308] * 3, [1.7e308] * 3]))
        with pytest.raises(MeshError, match="non-finite coordinates"):
            normalisation(np.array([[0.0] * 3, [np.inf, 1.0, 1.0]]))
        box = trimesh.creation.box()
        box.vertices *= 1e300
        from imnet.mesh import has_surface

        assert has_surface(box)

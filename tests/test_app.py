"""app.py: its functions with a tiny model, and the whole page driven in a real headless Chromium.

The model is conftest's `tiny_checkpoint`, which reconstructs the same box chair from any picture;
these tests are about the app around the network. Budget: under 90 s for the file.
"""

from __future__ import annotations

import copy
import io
import socket
import threading
import time
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
import trimesh

from conftest import CHAIR_BOXES
from app import (
    EXPORT_FORMATS,
    TURNTABLE_AZIMUTHS,
    EmptyMeshError,
    export_mesh,
    find_checkpoints,
    load_models,
    load_picture,
    main,
    reconstruct,
    relit_view,
    render_views,
    safe_stem,
)
from imnet.checkpoint import save_checkpoint
from imnet.images import ImageError

# gradio 6.31's queue calls pandas options that pandas 3 deprecates; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:gradio.queueing")

HERE = Path(__file__).parent
PHOTOS = HERE / "data" / "real_photos"
CHAIR_PHOTO = PHOTOS / "chair_06_01.png"
TABLE_PHOTO = PHOTOS / "table_08_02.png"
ARTIFACTS = HERE / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


@pytest.fixture(scope="module")
def app_model(tiny_checkpoint):
    models, refused = load_models({"chair": tiny_checkpoint})
    assert not refused
    return models["chair"]


@pytest.fixture(scope="module")
def chair_mesh(app_model) -> trimesh.Trimesh:
    mesh, _ = reconstruct(app_model, load_picture(CHAIR_PHOTO).pixels, resolution=48)
    return mesh


# ----------------------------------------------------------------------------------------------
# Checkpoints and the command line


def test_find_checkpoints_names_models_by_category_folder(tmp_path, tiny_checkpoint):
    for category in ("table", "chair"):
        (tmp_path / category).mkdir()
        (tmp_path / category / "best.pt").symlink_to(tiny_checkpoint)
    found = find_checkpoints(checkpoint_dir=tmp_path)
    assert list(found) == ["chair", "table"]
    assert found["table"] == tmp_path / "table" / "best.pt"
    assert find_checkpoints(checkpoint=tiny_checkpoint) == {tiny_checkpoint.parent.name: tiny_checkpoint}


def test_find_checkpoints_explains_what_is_missing(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.pt"):
        find_checkpoints(checkpoint=tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="no checkpoints in .*<category>/best.pt"):
        find_checkpoints(checkpoint_dir=tmp_path)
    monkeypatch.chdir(tmp_path)  # no demo_out/svr/best.pt here
    with pytest.raises(FileNotFoundError, match="make demo"):
        find_checkpoints()


def test_main_reports_a_missing_or_bad_checkpoint_in_one_line(tmp_path, capsys):
    assert main(["--checkpoint", str(tmp_path / "nope.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "checkpoint not found" in err

    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert main(["--checkpoint", str(tmp_path / "bad.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bad.pt" in err


def test_an_ae_checkpoint_is_refused_naming_the_right_stage(tiny_checkpoint, tiny_ae_checkpoint, capsys):
    assert main(["--checkpoint", str(tiny_ae_checkpoint)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert f"{tiny_ae_checkpoint} is an IM-AE checkpoint (train.py ae)" in err
    assert "images need an IM-SVR checkpoint (train.py svr)" in err
    models, refused = load_models({"chair": tiny_checkpoint, "ae": tiny_ae_checkpoint})
    assert list(models) == ["chair"] and "IM-AE checkpoint" in refused["ae"]


# ----------------------------------------------------------------------------------------------
# Picture -> mesh


def test_load_picture_gives_the_network_input_and_marks_the_crop():
    picture = load_picture(CHAIR_PHOTO)
    assert picture.pixels.shape == (128, 128) and picture.pixels.dtype == np.uint8
    assert picture.pixels.min() < 100 and picture.pixels[0, 0] == 255  # dark object on white
    assert picture.box.bottom - picture.box.top == picture.box.right - picture.box.left
    red = (picture.image[..., 0] > 200) & (picture.image[..., 1] < 60)
    assert picture.image.ndim == 3 and picture.image.dtype == np.uint8 and red.any()
    assert max(picture.image.shape[:2]) <= 512


def _png(size, color, mode="RGB") -> bytes:
    buffer = io.BytesIO()
    PIL.Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"this is not an image", "not an image"),
        (b"", "not an image"),
        (_png((300, 200), "white"), "no object found"),  # an empty canvas
        (_png((8000, 5100), 1, mode="1"), "40.8 megapixels"),  # 1-bit, so the file is small
    ],
    ids=["text", "empty-file", "blank-canvas", "huge"],
)
def test_load_picture_refuses_bad_input_with_a_clear_message(tmp_path, content, message):
    path = tmp_path / "upload.png"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=message) as error:
        load_picture(path)
    assert "upload.png" in str(error.value) and str(tmp_path) not in str(error.value)


def test_reconstruct_gives_the_chair_in_object_space(chair_mesh):
    assert chair_mesh.is_watertight
    expected = np.array([CHAIR_BOXES[:, 0].min(axis=0), CHAIR_BOXES[:, 1].max(axis=0)])
    np.testing.assert_allclose(chair_mesh.bounds, expected, atol=0.06)


def test_reconstruct_without_a_surface_says_what_to_do(app_model):
    nothing = copy.deepcopy(app_model)
    with torch.no_grad():
        nothing.decoder.layers[-1].code.bias.fill_(-30.0)  # occupancy ~0 everywhere
    with pytest.raises(EmptyMeshError, match="lower the iso-level"), pytest.warns(UserWarning, match="empty"):
        reconstruct(nothing, np.full((128, 128), 255, np.uint8), resolution=16)


# ----------------------------------------------------------------------------------------------
# Renders and files


def test_render_views_shapes_and_content(chair_mesh):
    views = render_views(chair_mesh, size=96)
    assert len(views.turntable) == len(TURNTABLE_AZIMUTHS)
    for image in (*views.turntable, views.relit, views.normals):
        assert image.shape == (96, 96, 3) and image.dtype == np.uint8
        assert (image[0, 0] == 255).all() and (image < 200).any()  # white background, an object
    assert not np.array_equal(views.turntable[0], views.turntable[2])  # front and side differ
    assert views.depth.shape == (96, 96) and views.depth[0, 0] == 255
    assert views.depth.min() == 0 and views.depth[views.depth < 255].max() == 200

    from_above = relit_view(chair_mesh, (0.0, 90.0), size=96)
    from_the_side = relit_view(chair_mesh, (-90.0, 0.0), size=96)
    assert not np.array_equal(from_above, from_the_side)
    np.testing.assert_array_equal(render_views(chair_mesh, light=(-90.0, 0.0), size=96).relit, from_the_side)


def test_renders_from_concurrent_sessions_are_each_correct(chair_mesh):
    expected = relit_view(chair_mesh, (30.0, 40.0), size=64)
    results = [None] * 4

    def work(i):
        results[i] = relit_view(chair_mesh, (30.0, 40.0), size=64)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for result in results:
        np.testing.assert_array_equal(result, expected)


def test_export_mesh_round_trips_every_format(tmp_path, chair_mesh):
    paths = export_mesh(chair_mesh, tmp_path / "out", "chair")
    assert sorted(paths) == sorted(EXPORT_FORMATS)
    for fmt, path in paths.items():
        assert path == tmp_path / "out" / f"chair.{fmt}"
        loaded = trimesh.load(path, force="mesh")
        assert len(loaded.faces) == len(chair_mesh.faces), fmt
        np.testing.assert_allclose(loaded.bounds, chair_mesh.bounds, atol=1e-5)


def test_safe_stem():
    assert safe_stem("/tmp/x/My chair (1).JPG") == "My_chair_1"
    assert safe_stem("../../etc/passwd") == "passwd"
    assert safe_stem("....png") == "reconstruction"
    assert safe_stem(None) == "reconstruction"


# ----------------------------------------------------------------------------------------------
# The page in a browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tiny_checkpoint, tiny_ae_checkpoint):
    from app import build_app, launch

    # "ae" is an IM-AE checkpoint: served in the menu, refused in the page when chosen.
    models = {"chair": tiny_checkpoint, "table": tiny_checkpoint, "ae": tiny_ae_checkpoint}
    demo = build_app(models, device="cpu", default_resolution=48)
    port = _free_port()
    launch(demo, "127.0.0.1", port, block=False, quiet=True)
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} not found: the end-to-end test needs Debian's chromium (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _open_page(browser, url, external_requests):
    # Tall enough for the whole page: the 3D viewer loads its model only once it is in view.
    context = browser.new_context(viewport={"width": 1280, "height": 1800}, accept_downloads=True)

    def only_local(route):  # the app must work offline: refuse and record anything else
        if route.request.url.startswith(url):
            route.continue_()
        else:
            external_requests.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.goto(url)
    return page


def _upload(page, file):
    clear = page.locator("#upload button[aria-label=Clear]")
    if clear.count():  # the file input only returns once the previous file is cleared
        clear.click()
    page.set_input_files("#upload input[type=file]", file)


def _wait_for_status(page, text):
    page.locator("#status").get_by_text(text).wait_for()
    return page.locator("#status").inner_text()


def _download(page, fmt, tmp_path) -> tuple[str, trimesh.Trimesh]:
    with page.expect_download() as info:
        page.locator(f"#download-{fmt}").click()
    path = tmp_path / info.value.suggested_filename
    info.value.save_as(path)
    return info.value.suggested_filename, trimesh.load(path, force="mesh")


def _viewer_shows_a_model(page, timeout_ms=30_000) -> bool:
    """Whether the 3D viewer's canvas shows more than its background (it loads and draws
    asynchronously). The top of the canvas is skipped: the component's label is drawn over it."""
    deadline = time.monotonic() + timeout_ms / 1000
    while time.monotonic() < deadline:
        shot = np.asarray(PIL.Image.open(io.BytesIO(page.locator("#viewer canvas").screenshot())).convert("L"))
        below_label = shot[60:].astype(int)
        if (np.abs(below_label - np.median(below_label)) > 30).mean() > 0.02:
            return True
        page.wait_for_timeout(500)  # not time.sleep: the page's routed requests are served meanwhile
    return False


@pytest.mark.slow
def test_page_end_to_end(app_url, browser, tmp_path):
    external = []
    first = _open_page(browser, app_url, external)
    second = _open_page(browser, app_url, external)

    # Two sessions at once, different pictures and category models: each gets its own result.
    second.locator("#category input").click()
    second.get_by_role("option", name="table").click()
    _upload(first, CHAIR_PHOTO)
    _upload(second, TABLE_PHOTO)
    first_status = _wait_for_status(first, "faces")
    second_status = _wait_for_status(second, "faces")
    assert "chair_06_01.png with the chair model" in first_status
    assert "table_08_02.png with the table model" in second_status
    for step in ("preprocess", "encode + extract", "render", "export"):
        assert step in first_status

    # The viewer loaded a non-empty mesh and drew it.
    first.locator("#viewer canvas").wait_for(state="visible")
    assert _viewer_shows_a_model(first)
    model_url = first.locator("#viewer [data-testid=model3d-download-link]").get_attribute("href")
    assert model_url.endswith("/chair_06_01.glb")
    fetched = first.evaluate("performance.getEntriesByType('resource').map(entry => entry.name)")
    assert model_url in fetched  # the viewer itself loaded this file
    shown = trimesh.load(io.BytesIO(first.request.get(model_url).body()), file_type="glb", force="mesh")
    assert len(shown.faces) > 100

    # Downloads are the session's own mesh.
    name, mesh = _download(first, "obj", tmp_path)
    assert name == "chair_06_01.obj" and len(mesh.faces) > 100
    name, mesh = _download(second, "obj", tmp_path)
    assert name == "table_08_02.obj" and len(mesh.faces) > 100

    # Relighting re-renders the view.
    first.locator("#light-azimuth input[type=number]").fill("-90")
    first.locator("#light-azimuth input[type=number]").blur()
    first.get_by_text("relit in").wait_for()

    ARTIFACTS.mkdir(exist_ok=True)
    first.screenshot(path=ARTIFACTS / "app.png", full_page=True)

    # A file that is not an image: a message in the page, and the app keeps serving.
    _upload(first, {"name": "notes.png", "mimeType": "image/png", "buffer": b"not an image"})
    first.get_by_text("notes.png: not an image Pillow can read").wait_for()
    # ... and nothing of the earlier picture stays under the message, as if it were this one's.
    assert not first.locator("#viewer canvas").count() or not _viewer_shows_a_model(first, timeout_ms=2_000)
    assert first.locator("#download-obj").is_disabled()
    assert not first.locator("#picture img").count()
    second.locator("#resolution input[type=number]").fill("32")
    second.locator("#resolution input[type=number]").blur()
    second.locator("#reconstruct").click()
    assert "resolution 32" in _wait_for_status(second, "resolution 32")

    # The IM-AE checkpoint in the menu: its one-line reason in the page, nothing reconstructed.
    second.locator("#category input").click()
    second.get_by_role("option", name="ae").click()
    second.locator("#reconstruct").click()
    second.get_by_text("images need an IM-SVR checkpoint (train.py svr)").wait_for()

    assert external == []


# ----------------------------------------------------------------------------------------------
# Faults and bad input around the page


def test_a_resolution_outside_the_slider_is_one_line(tiny_checkpoint, capsys):
    assert main(["--checkpoint", str(tiny_checkpoint), "--resolution", "100000"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "python app.py: error: --resolution must be in 16..512, got 100000"


def test_an_error_clears_the_previous_pictures_results(tiny_checkpoint, tmp_path):
    from app import build_app

    demo = build_app({"chair": tiny_checkpoint}, device="cpu", default_resolution=32)
    run = next(f.fn for f in demo.fns.values() if f.name == "run")
    good = run(str(CHAIR_PHOTO), "chair", 32, 0.5, 0.0, 45.0, None)
    session = good[-1]
    assert good[2].endswith("chair_06_01.glb") and session.folder.is_dir() and good[0] is not None
    bad = tmp_path / "notes.png"
    bad.write_bytes(b"not an image")
    cleared = run(str(bad), "chair", 32, 0.5, 0.0, 45.0, session)
    picture, network_input, viewer, relit, turntable, depth, normals, *downloads, status, new_session = cleared
    assert (picture, network_input, viewer, relit, depth, normals, new_session) == (None,) * 7 and turntable == []
    assert all(not button.interactive and button.value is None for button in downloads)
    assert status.startswith("**Cannot reconstruct this picture**: notes.png: not an image")
    assert not session.folder.exists()  # the earlier mesh files went with their session


def test_the_iso_level_slider_starts_at_each_models_own_level(tiny_checkpoint, tmp_path):
    from app import build_app

    checkpoint = torch.load(tiny_checkpoint, weights_only=True)
    checkpoint["model"]["decoder.level"] = torch.tensor(0.65)
    calibrated = tmp_path / "table" / "best.pt"
    save_checkpoint(calibrated, {k: v for k, v in checkpoint.items() if k not in ("format", "version")})
    demo = build_app({"chair": tiny_checkpoint, "table": calibrated}, device="cpu", default_resolution=32)
    slider = next(block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "level")
    assert slider.value == 0.5  # the first model's (an uncalibrated checkpoint: 0.5)
    pick = next(f.fn for f in demo.fns.values() if f.name == "level_of_category")
    assert pick("table") == 0.65 and pick("chair") == 0.5


def test_sigterm_stops_the_app_and_removes_its_temporary_folder(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """`kill` (SIGTERM) stops the app as Ctrl-C does, while serving and while starting, and the
    folder of every session's meshes goes with it."""
    import os
    import signal
    import tempfile
    import urllib.request

    import app

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where build_app makes its folder
    argv = ["--checkpoint", str(tiny_checkpoint), "--device", "cpu"]
    port, seen, done = _free_port(), [], threading.Event()

    def kill_once_served():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not done.is_set():
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        seen.extend(tmp_path.glob("imnet-app-*"))
        if not done.is_set():  # only while main() runs
            os.kill(os.getpid(), signal.SIGTERM)

    def not_handled(signum, frame):  # in place of the default action, which would end the test process
        raise pytest.fail.Exception("SIGTERM was not handled by the app")

    before = signal.signal(signal.SIGTERM, not_handled)
    killer = threading.Thread(target=kill_once_served, daemon=True)
    try:
        killer.start()
        assert main([*argv, "--port", str(port)]) == 0  # serving: Gradio's own wait is interrupted
        done.set()
        killer.join()
        assert len(seen) == 1 and not seen[0].exists()
        assert capsys.readouterr().out.strip().endswith("python app.py: stopped")

        # Stopped while the server was still starting, before Gradio waits for an interrupt itself.
        monkeypatch.setattr(app, "launch", lambda *args, **kwargs: (os.kill(os.getpid(), signal.SIGTERM), time.sleep(30)))
        assert main(argv) == 0
        assert not list(tmp_path.glob("imnet-app-*"))
        assert signal.getsignal(signal.SIGTERM) is not_handled  # main() put the handler back
    finally:
        done.set()
        signal.signal(signal.SIGTERM, before)

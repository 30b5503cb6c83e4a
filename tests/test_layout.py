"""How the project is put together: the library imports no program and no optional package, every
library module names its API, the docs stand alone, and only the library is installed."""

from __future__ import annotations

import importlib
import json
import pkgutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import imnet

ROOT = Path(__file__).resolve().parents[1]
PROGRAMS = ("app", "train", "reconstruct", "data_prep", "eval")
LIBRARY_MODULES = sorted(f"imnet.{m.name}" for m in pkgutil.iter_modules(imnet.__path__))


# One fresh interpreter imports, step by step, imnet, its whole public API, every library module and
# the eval program, and says which top-level packages were loaded after each step (one process,
# since each start costs seconds of torch imports).
_PROBE = """
import json, sys
def loaded():
    return sorted({name.split('.')[0] for name in sys.modules})
steps = {}
import imnet
steps['import imnet'] = loaded()
[getattr(imnet, name) for name in imnet.__all__]
steps['public API'] = loaded()
for name in %r:
    __import__(name)
steps['library'] = loaded()
import eval.__main__, eval.run, eval.baseline, eval.report, eval.published
steps['eval'] = loaded()
print(json.dumps(steps))
"""


@pytest.fixture(scope="module")
def loaded_after() -> dict[str, set[str]]:
    result = subprocess.run([sys.executable, "-c", _PROBE % (LIBRARY_MODULES,)], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    return {step: set(names) for step, names in json.loads(result.stdout).items()}


def test_import_imnet_loads_no_app_renderer_or_logging_package(loaded_after):
    assert "torch" not in loaded_after["import imnet"]  # names are imported on first use
    assert "torch" in loaded_after["public API"]  # the whole public API was imported
    assert not loaded_after["public API"] & {"gradio", "pyrender", "OpenGL", "tensorboard", "playwright"}


def test_the_library_imports_no_program(loaded_after):
    assert not loaded_after["library"] & set(PROGRAMS)
    assert not loaded_after["library"] & {"gradio", "pyrender", "OpenGL"}  # only imported where they are used


def test_eval_does_not_import_data_prep(loaded_after):
    assert "data_prep" not in loaded_after["eval"]


@pytest.mark.parametrize("name", [*LIBRARY_MODULES, "imnet"])
def test_every_library_module_names_its_public_api(name):
    module = importlib.import_module(name)
    assert hasattr(module, "__all__"), f"{name} has no __all__"
    missing = [item for item in module.__all__ if not hasattr(module, item)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"


def test_the_public_api_covers_image_to_mesh():
    for name in ("IMNet", "Decoder", "VoxelEncoder", "ImageEncoder", "load_model", "preprocess",
                 "reconstruct_image", "reconstruct_code", "extract_mesh", "dense_grid", "resolve_device"):
        assert name in imnet.__all__


def test_only_the_library_is_installed_and_the_optional_packages_are_extras():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["tool"]["setuptools"]["packages"] == ["imnet"]
    assert "scripts" not in project["project"]
    dependencies = " ".join(project["project"]["dependencies"])
    assert "gradio" not in dependencies and "pyrender" not in dependencies
    extras = project["project"]["optional-dependencies"]
    assert any(d.startswith("pyrender") for d in extras["render"])
    assert any(d.startswith("gradio") for d in extras["app"]) and "imnet[render]" in extras["app"]
    assert "imnet[app]" in extras["test"]


def _tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    return [ROOT / name for name in names if Path(name).suffix in (".py", ".md", ".sh", ".toml", ".txt", ".yml", "")]


def test_docs_and_code_cite_no_file_users_do_not_have():
    private = "REFERENCE" + ".md"  # spelled apart so that this file does not cite it either
    citing = [str(path.relative_to(ROOT)) for path in _tracked_text_files()
              if path.is_file() and private in path.read_text(errors="ignore")]
    assert citing == []


def test_design_doc_lists_every_module_and_program():
    design = (ROOT / "docs" / "design.md").read_text()
    for name in LIBRARY_MODULES:
        assert f"`imnet/{name.split('.')[1]}.py`" in design, name
    for program in ("`train.py`", "`reconstruct.py`", "`app.py`", "`data_prep/`", "`eval/`"):
        assert program in design

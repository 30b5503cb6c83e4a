"""requirements.txt and environment.yml describe the same pinned environment."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def requirement_pins(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        line = line.split("#")[0].strip().lstrip("- ").strip()
        match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)==([^\s]+)", line)
        if match:
            pins[match.group(1).lower()] = match.group(2)
    return pins


def test_requirements_are_all_pinned():
    lines = [l.split("#")[0].strip() for l in (ROOT / "requirements.txt").read_text().splitlines()]
    lines = [l for l in lines if l]
    assert lines, "requirements.txt is empty"
    unpinned = [l for l in lines if "==" not in l]
    assert not unpinned, f"unpinned requirements: {unpinned}"


def test_environment_yml_matches_requirements():
    req = requirement_pins((ROOT / "requirements.txt").read_text())
    env_text = (ROOT / "environment.yml").read_text()
    pip_section = env_text.split("- pip:", 1)[1]
    env = requirement_pins(pip_section)
    assert env == req


def test_pinned_versions_are_installed():
    from importlib.metadata import version

    for name, pinned in requirement_pins((ROOT / "requirements.txt").read_text()).items():
        assert version(name) == pinned, f"{name}: installed {version(name)}, pinned {pinned}"


def test_torchvision_runs_on_cpu():
    import torch
    import torchvision

    net = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 4)
    # torchvision's compiled ops are what the CPU-only torch wheel breaks.
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    assert torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5).tolist() == [0]

"""Packaging: the wheel's contents, and the core importing without nipype or click."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_IGNORE = shutil.ignore_patterns(".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                 "cache", "runs", "*.pyc")


def _build_deps_installed() -> bool:
    """pyproject's build requirements (setuptools>=64, wheel) present in this environment?"""
    import importlib.metadata as md

    try:
        major = int(md.version("setuptools").split(".")[0])
        md.version("wheel")
    except md.PackageNotFoundError:
        return False
    return major >= 64


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Build a wheel from a copy of the source tree (the checkout is left clean): (names, entry_points.txt)."""
    if not (ROOT / "setup.cfg").is_file():
        pytest.skip("not running from a source checkout")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=_IGNORE)
    dist = tmp / "dist"
    cmd = [sys.executable, "-m", "build", "--wheel", "--outdir", str(dist), str(src)]
    if _build_deps_installed():
        cmd.insert(4, "--no-isolation")  # fast, offline
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    wheels = list(dist.glob("usb_prep-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as z:
        names = z.namelist()
        ep = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        return names, (z.read(ep[0]).decode() if ep else "")


def test_wheel_top_level(wheel):
    wheel_names, _ = wheel
    tops = {n.split("/", 1)[0] for n in wheel_names}
    others = {t for t in tops if t != "usb_prep" and not (t.startswith("usb_prep-") and t.endswith(".dist-info"))}
    assert not others, f"unexpected top-level entries in the wheel: {sorted(others)}"
    assert "usb_prep" in tops
    assert "interfaces" not in tops and "pipelines" not in tops


def test_wheel_contents(wheel):
    names = set(wheel[0])
    for required in ("usb_prep/__init__.py", "usb_prep/api.py", "usb_prep/cli/fill.py", "usb_prep/data/__init__.py",
                     "usb_prep/interfaces/__init__.py", "usb_prep/pipelines/__init__.py"):
        assert required in names, f"{required} missing from the wheel"
    # every module of the source tree is in the wheel (a subpackage missing from setup.cfg is caught here)
    sources = {str(p.relative_to(ROOT)) for p in (ROOT / "usb_prep").rglob("*.py")}
    sources |= {f"usb_prep/{p.relative_to(ROOT)}" for d in ("interfaces", "pipelines") for p in (ROOT / d).glob("*.py")}
    missing = sorted(sources - names)
    assert not missing, f"modules missing from the wheel: {missing}"
    if (ROOT / "usb_prep" / "weights" / "default" / "usb.json").is_file():
        assert "usb_prep/weights/default/usb.json" in names
        man_files = [n for n in names if n.startswith("usb_prep/weights/default/") and n.endswith(".safetensors")]
        assert man_files, "the packaged weights' .safetensors files are missing from the wheel"
    assert not any(n.startswith("tests/") for n in names)


def test_wheel_entry_points(wheel):
    text = wheel[1]
    for name, target in (("usb-fill", "usb_prep.cli.fill:main"), ("usb-embed", "usb_prep.cli.fill:embed"),
                         ("usb-generate", "usb_prep.cli.fill:generate"), ("usb-train", "usb_prep.cli.train:main")):
        assert f"{name} = {target}" in text, f"console script {name} not declared"


def test_core_imports_without_nipype_and_click():
    code = (
        "import sys\n"
        "sys.modules['nipype'] = None\n"
        "sys.modules['click'] = None\n"
        "import usb_prep.api, usb_prep.diffusion.sampling, usb_prep.train.diffusion, usb_prep.weights, usb_prep.io\n"
        "assert 'nipype' not in [m for m, v in sys.modules.items() if v is not None]\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]

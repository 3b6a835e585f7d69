"""`pip install .` ships every file the package needs (issue 23: the wheel held none of weights/study/)."""
import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_package_data_globs_cover_every_shipped_file():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = conf["tool"]["setuptools"]["package-data"]["frankenstein_utils"]
    pkg = ROOT / "frankenstein_utils"
    shipped = [p.relative_to(pkg).as_posix() for p in (pkg / "weights").rglob("*") if p.is_file()]
    # setuptools matches each glob against paths relative to the package; "*" does not cross a "/"
    missing = [f for f in shipped if not any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)]
    assert len(shipped) > 40 and not missing, missing
    assert any(f.startswith("weights/study/") for f in shipped)
    assert "weights/appearance.safetensors" in shipped

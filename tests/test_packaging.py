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


def test_the_wheel_holds_every_module_of_every_stage_and_every_shipped_file(tmp_path):
    """``pip install .`` installs what ``pip wheel .`` builds: every file of the package's stage folders (a stage
    missing from the package discovery would install a package that cannot import) and every shipped weight."""
    import shutil
    import subprocess
    import sys
    import zipfile

    src = tmp_path / "src"  # a copy: pip builds in the tree, and a stale build/ there would hide a missing stage
    shutil.copytree(ROOT / "frankenstein_utils", src / "frankenstein_utils", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / f, src / f)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    pkg = ROOT / "frankenstein_utils"
    tracked = subprocess.run(["git", "ls-files", "frankenstein_utils"], cwd=ROOT, capture_output=True, text=True)
    files = set(tracked.stdout.split()) if tracked.returncode == 0 and tracked.stdout else {
        p.relative_to(ROOT).as_posix() for p in pkg.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert any(f.endswith("pretrained/shipped.py") for f in files) and any(f.endswith(".safetensors") for f in files)
    assert sorted(files - inside) == []

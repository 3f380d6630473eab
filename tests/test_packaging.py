"""The library installs on its own: a wheel of sfv_core with its bundled demo files (nothing of
the ComfyUI pack), importable from outside the clone, with the `sfv` / `sfv-core` commands.

The wheel is built with setuptools' PEP 517 backend (no network, no build isolation) in a child
interpreter, from a copy of the files a clone has; a second child, whose path holds the unpacked
wheel and not the clone, imports it.
"""

import json
import multiprocessing
import runpy
import shutil
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BUILD = """
import os
from setuptools import build_meta
os.chdir(SOURCE)  # the backend builds the project in the current folder
build_meta.build_wheel(OUT)
"""

IMPORT = """
import json, os, sys
from pathlib import Path
os.chdir(ELSEWHERE)
sys.path = [SITE] + [p for p in sys.path if p and not Path(p).resolve().is_relative_to(CLONE)]
import sfv_core
from sfv_core.assets import TOY_CHECKPOINT, TOY_START_IMAGE
from sfv_core.checkpoints import inspect_checkpoint
from sfv_core.cli import build_parser
build_parser().parse_args(["generate", "--steps", "2"])
Path(RESULT).write_text(json.dumps({
    "package": sfv_core.__file__, "kind": inspect_checkpoint(TOY_CHECKPOINT).kind, "start_image": TOY_START_IMAGE.is_file(),
    "clone_modules": sorted(name for name, module in sys.modules.items() if str(getattr(module, "__file__", "") or "").startswith(CLONE)),
}))
"""


def _run_in_child(code: str, tmp_path: Path, **names) -> None:
    script = tmp_path / f"child_{len(list(tmp_path.glob('child_*')))}.py"
    script.write_text(code)
    child = multiprocessing.get_context("spawn").Process(target=runpy.run_path, args=(str(script),), kwargs={"init_globals": names})
    child.start()
    child.join(300)
    assert child.exitcode == 0, f"{script.name} failed (exit code {child.exitcode})"


def test_package_list_names_every_package_of_sfv_core():
    listed = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    found = [".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / "sfv_core").rglob("__init__.py")]
    assert sorted(listed) == sorted(found)


def test_wheel_installs_the_library_alone_and_imports_outside_the_clone(tmp_path):
    source = tmp_path / "source"
    shutil.copytree(ROOT / "sfv_core", source / "sfv_core", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    _run_in_child(BUILD, tmp_path, SOURCE=str(source), OUT=str(tmp_path / "dist"))
    (wheel,) = (tmp_path / "dist").glob("sfv-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        entry_points = archive.read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
        archive.extractall(tmp_path / "site")
    assert {name.split("/")[0] for name in names} == {"sfv_core", wheel.name.split("-py3")[0] + ".dist-info"}
    assert "sfv_core/assets/sfv_toy.safetensors" in names and "sfv_core/checkpoints/loading.py" in names
    assert "sfv = sfv_core.cli:main" in entry_points and "sfv-core = sfv_core.cli:main" in entry_points

    (tmp_path / "elsewhere").mkdir()
    result = tmp_path / "result.json"
    _run_in_child(IMPORT, tmp_path, SITE=str(tmp_path / "site"), CLONE=str(ROOT), ELSEWHERE=str(tmp_path / "elsewhere"), RESULT=str(result))
    imported = json.loads(result.read_text())
    assert Path(imported["package"]).is_relative_to(tmp_path / "site")
    assert imported["kind"] == "svd_single_file" and imported["start_image"]
    assert imported["clone_modules"] == []


def test_readme_library_snippet_runs_as_written(tmp_path, monkeypatch):
    """The README's Library block, run as a file in an empty folder: no placeholder files."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("\n## Library\n"):]
    snippet = section[section.index("```python\n") + len("```python\n"):section.index("\n```", section.index("```python\n"))]
    script = tmp_path / "snippet.py"
    script.write_text(snippet + "\n")
    monkeypatch.chdir(tmp_path)
    import torch

    torch.set_num_threads(1)
    namespace = runpy.run_path(str(script))
    assert namespace["frames"].shape == (1, 8, 64, 64, 3)
    assert (tmp_path / "clip.mp4").stat().st_size > 0


def test_registry_icon_is_small_square_and_is_the_one_pyproject_names():
    from PIL import Image

    icon_url = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["comfy"]["Icon"]
    path = ROOT / icon_url.split("/main/", 1)[1]
    with Image.open(path) as icon:
        assert icon.width == icon.height <= 512 and icon.format == "PNG"
    assert path.stat().st_size < 100_000


def test_matplotlib_is_never_a_runtime_requirement():
    """The plot is a train/dev extra: not in requirements.txt, and imported only inside a function."""
    import re

    assert "matplotlib" not in (ROOT / "requirements.txt").read_text()
    assert "matplotlib" in (ROOT / "requirements-train.txt").read_text() and "matplotlib" in (ROOT / "requirements-dev.txt").read_text()
    files = [ROOT / "__init__.py", *(ROOT / "nodes").glob("*.py"), *(ROOT / "sfv_core").rglob("*.py")]
    assert [path.name for path in files if re.search(r"^(import|from) matplotlib", path.read_text(), re.MULTILINE)] == []

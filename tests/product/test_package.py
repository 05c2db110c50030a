"""The installable package: the wheel holds the library only, installs into a fresh virtual environment,
and gives the `mimic` command; LICENSE and CITATION.cff say what the README says.

Offline and without downloading torch again: the wheel is built without build isolation from a copy of
the sources, and the fresh environment reaches the already installed dependencies through a .pth file.
"""
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest
import yaml

import mimic
from tests.conftest import ROOT


def run(*args, cwd, timeout=300, env=None):
    out = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                         env={**os.environ, **(env or {})})
    assert out.returncode == 0, f"{args}: {out.stdout[-2000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """Build the wheel from a copy of what a source distribution holds (the repository stays clean)."""
    source = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    shutil.copytree(os.path.join(ROOT, "mimic"), source / "mimic", ignore=shutil.ignore_patterns("__pycache__"))
    dist = tmp_path_factory.mktemp("dist")
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
        "-w", str(dist), str(source), cwd=str(source))
    (path,) = dist.glob("mimic_el-*.whl")
    return path


def test_the_wheel_holds_the_library_and_its_data_only(wheel):
    assert wheel.name == f"mimic_el-{mimic.__version__}-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    packages = {n.split("/")[0] for n in names}
    assert packages == {"mimic", f"mimic_el-{mimic.__version__}.dist-info"}
    shipped = {n for n in names if n.startswith("mimic/")}
    sources = {os.path.relpath(os.path.join(folder, n), ROOT).replace(os.sep, "/")
               for folder, _, files in os.walk(os.path.join(ROOT, "mimic")) for n in files if n.endswith(".py")}
    assert {"mimic/model/matcher.py", "mimic/kb/store.py", "mimic/cli/__init__.py"} <= sources  # every subpackage
    assert shipped == sources | {"mimic/model/clip_vit_b32.json"}
    meta = zipfile.ZipFile(wheel).read(f"mimic_el-{mimic.__version__}.dist-info/METADATA").decode()
    assert "Name: mimic-el" in meta and "License-Expression: MIT" in meta and "Requires-Python: >=3.10" in meta
    assert "Provides-Extra: demo" in meta and "Provides-Extra: train" in meta
    assert "Requires-Dist: gradio" in meta and "extra == \"demo\"" in meta  # the demo's needs are an extra
    entry_points = zipfile.ZipFile(wheel).read(f"mimic_el-{mimic.__version__}.dist-info/entry_points.txt").decode()
    assert "mimic = mimic.cli:main" in entry_points


def test_the_wheel_installs_into_a_fresh_environment_and_runs_from_anywhere(wheel, tmp_path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", str(venv), cwd=str(tmp_path))
    python = venv / "bin" / "python"
    fresh = run(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])",
                cwd=str(tmp_path)).stdout.strip()
    # the dependencies, already installed here, without the repository: it must not be what gets imported
    with open(os.path.join(fresh, "dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    run(sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel),
        cwd=str(tmp_path))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"PYTHONPATH": "", "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = run(str(venv / "bin" / "mimic"), "--help", cwd=str(elsewhere), env=env)
    assert out.stdout.startswith("usage: mimic ") and "push-to-hub" in out.stdout
    out = run("mimic", "link", "--help", cwd=str(elsewhere), env=env)
    assert "--kb DIR" in out.stdout and "open_clip:MODEL/PRETRAINED" in out.stdout
    out = run(str(python), "-c", "from mimic.linker import Linker; import mimic; print(mimic.__file__)",
              cwd=str(elsewhere), env=env)
    assert out.stdout.strip() == os.path.join(fresh, "mimic", "__init__.py")


def test_license_and_citation():
    license_text = open(os.path.join(ROOT, "LICENSE")).read()
    assert license_text.startswith("MIT License") and "assets/README.md" in license_text
    front_matter = open(os.path.join(ROOT, "README.md")).read().split("---")[1]
    assert "license: mit" in front_matter
    citation = yaml.safe_load(open(os.path.join(ROOT, "CITATION.cff")))
    assert citation["cff-version"] == "1.2.0" and citation["version"] == mimic.__version__
    paper = citation["preferred-citation"]
    assert paper["title"] == "Multi-Grained Multimodal Interaction Network for Entity Linking"
    assert [a["family-names"] for a in paper["authors"]] == ["Luo", "Xu", "Wu", "Zhu", "Xu", "Chen"]
    assert paper["year"] == 2023 and "2307.09721" in paper["url"]
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert "## Cite" in readme and "luo2023mimic" in readme


def test_from_mimic_import_linker_and_import_mimic_stays_light():
    code = ("import sys, mimic; light = 'torch' not in sys.modules; from mimic import Linker; "
            "import mimic.linker; print(light, Linker is mimic.linker.Linker, 'torch' in sys.modules)")
    out = run(sys.executable, "-c", code, cwd=ROOT)
    assert out.stdout.split() == ["True", "True", "True"]
    with pytest.raises(AttributeError, match="no attribute 'Linkr'"):
        mimic.Linkr  # noqa: B018


def _pinned(name):
    lines = open(os.path.join(ROOT, name), encoding="utf-8").read().splitlines()
    return {line.split("==")[0].lower() for line in lines if line.strip() and not line.startswith("#")}


def test_serving_installs_no_test_or_training_tools():
    serving, dev = _pinned("requirements.txt"), _pinned("requirements-dev.txt")
    assert not serving & {"pytest", "hypothesis", "playwright", "lightning", "psutil"}
    assert {"pytest", "playwright", "lightning"} <= dev and not serving & dev
    assert {"torch", "gradio", "faiss-cpu", "open_clip_torch", "omegaconf", "filelock"} <= serving

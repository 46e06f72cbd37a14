"""Every notebook runs (nbdev-test, skipping `slow`/`gpu` cells), and the exported package matches the notebooks."""
import filecmp, json, os, shutil, subprocess, sys
from pathlib import Path

import pytest

from conftest import NBS, ROOT

BIN = Path(sys.executable).parent
NOTEBOOKS = sorted(p for p in NBS.rglob("*.ipynb")
                   if not p.name.startswith(("repro_", "_", ".")) and ".ipynb_checkpoints" not in p.parts)
REPRO = sorted(NBS.glob("repro_*.ipynb"))


def _env():
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONWARNINGS="ignore")
    env.pop("IN_TEST", None)
    return env


@pytest.mark.notebook
@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: str(p.relative_to(NBS)))
def test_notebook_runs(nb):
    r = subprocess.run([str(BIN / "nbdev-test"), str(nb)], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, f"{nb.name} failed under nbdev-test:\n{r.stdout[-3000:]}\n{r.stderr[-6000:]}"


def _copy_project(dst: Path):
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    shutil.copytree(NBS, dst / "nbs", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copytree(ROOT / "uad_notebooks", dst / "uad_notebooks", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("README.md",):
        if (ROOT / f).exists(): shutil.copy(ROOT / f, dst / f)


def _diff(a: Path, b: Path) -> list[str]:
    "Relative paths that differ between folders a and b (missing on either side, or different content)."
    out = []
    names = lambda d: {p.relative_to(d) for p in d.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    na, nb_ = names(a), names(b)
    out += [f"only in exported copy: {p}" for p in sorted(na - nb_)] + [f"only in repo: {p}" for p in sorted(nb_ - na)]
    out += [f"differs: {p}" for p in sorted(na & nb_) if not filecmp.cmp(a / p, b / p, shallow=False)]
    return out


def test_export_leaves_package_unchanged(tmp_path):
    """`nbdev-export` on a copy of the project must reproduce uad_notebooks/ exactly (no hand edits, no stale export)."""
    _copy_project(tmp_path)
    r = subprocess.run([str(BIN / "nbdev-export")], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    diff = _diff(tmp_path / "uad_notebooks", ROOT / "uad_notebooks")
    assert not diff, "nbdev-export would change uad_notebooks/ (run nbdev-export and commit):\n" + "\n".join(diff)


def test_notebooks_are_clean(tmp_path):
    """`nbdev-clean` must leave the notebooks as committed (no stray metadata or execution counts)."""
    _copy_project(tmp_path)
    r = subprocess.run([str(BIN / "nbdev-clean")], cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    diff = [d for d in _diff(tmp_path / "nbs", NBS) if d.endswith(".ipynb")]
    assert not diff, "nbdev-clean would change these notebooks (run nbdev-clean and commit):\n" + "\n".join(diff)


@pytest.mark.parametrize("nb", REPRO, ids=lambda p: p.name)
def test_repro_notebook_layout(nb):
    """Repro notebooks: committed without outputs, a `parameters` cell with the defaults marker, then check_parameters()."""
    cells = json.loads(nb.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert not any(c.get("outputs") for c in code), f"{nb.name} is committed with outputs"
    src = lambda c: "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
    i = next((k for k, c in enumerate(code) if "parameters" in c.get("metadata", {}).get("tags", [])), None)
    assert i is not None, f"{nb.name} has no cell tagged 'parameters'"
    assert src(code[i]).startswith("# Default parameters"), f"{nb.name}: the parameters cell must start with '# Default parameters'"
    for name in ("data_dir", "out_dir", "seed", "device", "smoke"):
        assert f"\n{name}" in src(code[i]), f"{nb.name}: parameter {name!r} missing"
    assert "check_parameters()" in src(code[i + 1]), f"{nb.name}: the cell after the parameters must call check_parameters()"


@pytest.mark.parametrize("nb", REPRO, ids=lambda p: p.name)
def test_papermill_reads_every_parameter(nb):
    """`papermill --help-notebook` must see every parameter of the cell (a help comment with '=' breaks its parser)."""
    import papermill as pm
    from uad_notebooks.core import _assignments
    cells = json.loads(nb.read_text())["cells"]
    src = next("".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in cells
               if "parameters" in c.get("metadata", {}).get("tags", []))
    seen = pm.inspect_notebook(str(nb))
    assert set(seen) == set(_assignments(src)), f"papermill cannot parse: {set(_assignments(src)) - set(seen)}"
    assert all(p["help"] for p in seen.values()), f"{nb.name}: every parameter needs a help comment"

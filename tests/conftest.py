"""Shared pytest fixtures: paths and a papermill runner for the repro notebooks."""
import json, os, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
SHARED = ROOT.parent / "shared"

os.environ.setdefault("MPLBACKEND", "Agg")


@pytest.fixture
def run_repro(tmp_path):
    """Run `nbs/<name>.ipynb` under papermill (smoke mode by default) and return (metrics dict, out_dir)."""
    def _run(name, **params):
        import papermill as pm
        out_dir = tmp_path / "out"
        params = {"smoke": True, "out_dir": str(out_dir), **params}
        pm.execute_notebook(str(NBS / f"{name}.ipynb"), str(tmp_path / f"{name}.out.ipynb"), parameters=params,
                            cwd=str(NBS), kernel_name="python3", progress_bar=False)
        return json.loads((out_dir / "metrics.json").read_text()), out_dir
    return _run


@pytest.fixture
def shared_data():
    """Path to ../shared/data, or skip cleanly where it is absent."""
    p = SHARED / "data"
    if not p.exists(): pytest.skip("../shared/data is not present")
    return p

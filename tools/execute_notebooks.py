"""Execute the lesson notebooks so that they are committed with their outputs (figures, printed results).

    .venv/bin/python tools/execute_notebooks.py                          # every lesson notebook of nbs/, in place
    .venv/bin/python tools/execute_notebooks.py nbs/11_mae.ipynb nbs/44_masked_ddpm.ipynb
    .venv/bin/python tools/execute_notebooks.py --nbs /tmp/copy/nbs      # every lesson notebook of another folder
    .venv/bin/python tools/execute_notebooks.py nbs/11_mae.ipynb -o /tmp/executed   # write copies, leave nbs/ alone

Cells run as `nbdev-test` runs them: cells flagged `#| slow` or `#| gpu` (pyproject's `tst_flags`) or `#| eval:
false` are skipped and left without outputs. Each notebook runs in a fresh kernel in its own folder, with
matplotlib's inline backend (an inherited `MPLBACKEND=Agg` would hide every figure), within `--timeout` seconds in
all. The result is then cleaned exactly as `nbdev-clean` cleans (no execution counts, no metadata noise), so
`tests/test_notebooks.py::test_notebooks_are_clean` passes on it. Repro notebooks (`repro_*.ipynb`) are never
touched: they stay committed without outputs and run under papermill. A notebook that fails is reported and left
unchanged; the exit status is then 1.

Executing every lesson notebook takes a few minutes on 2 CPU cores: run it under `nice`, with
`OMP_NUM_THREADS=1`, and commit the notebooks afterwards.
"""
from __future__ import annotations
import argparse, os, shutil, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_docs import SKIP_FLAGS, is_skipped, split_directives  # noqa: E402  (one parser of nbdev directives)

INLINE = "module://matplotlib_inline.backend_inline"


def lesson_notebooks(nbs: Path) -> list[Path]:
    "Every notebook under `nbs` except repro_*, `_*`/`.*` and checkpoints (the set tests/test_notebooks.py runs)."
    return sorted(p for p in Path(nbs).rglob("*.ipynb")
                  if not p.name.startswith(("repro_", "_", ".")) and ".ipynb_checkpoints" not in p.parts)


def _client_class():
    from nbclient import NotebookClient

    class SkippingClient(NotebookClient):
        "Runs every cell except those nbdev-test skips; the notebook's whole run must end by `deadline`."
        flags: tuple = ("slow", "gpu")
        deadline: float = float("inf")
        skipped: int = 0

        async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
            if cell.cell_type == "code":
                dirs, _ = split_directives(cell.source)
                if is_skipped(dirs, self.flags):
                    cell.outputs, cell.execution_count = [], None
                    self.skipped += 1
                    return cell
                left = self.deadline - time.monotonic()
                if left <= 0: raise TimeoutError("the notebook's time budget is spent")
                self.timeout = max(1, int(left))
            return await super().async_execute_cell(cell, cell_index, execution_count, store_history)
    return SkippingClient


def clean(path: Path) -> None:
    "Clean `path` in place exactly as `nbdev-clean` does, with this project's [tool.nbdev] settings."
    from fastcore.xtras import working_directory
    from nbdev.clean import nbdev_clean
    with working_directory(ROOT): nbdev_clean.__wrapped__(fname=str(path))


def execute(nb_path: Path, out_path: Path | None = None, timeout: float = 600, flags=None) -> dict:
    "Execute one lesson notebook and write it cleaned to `out_path` (default: in place); returns a summary."
    import nbformat
    nb_path = Path(nb_path).resolve()
    if nb_path.name.startswith("repro_"):
        raise ValueError(f"{nb_path}: repro notebooks are committed without outputs; execute_notebooks never runs them")
    if not nb_path.is_file(): raise FileNotFoundError(f"no such notebook: {nb_path}")
    out_path = Path(out_path).resolve() if out_path else nb_path
    nb = nbformat.read(str(nb_path), as_version=4)
    Client = _client_class()
    client = Client(nb, timeout=int(timeout), kernel_name=nb.metadata.get("kernelspec", {}).get("name", "python3"),
                    resources={"metadata": {"path": str(nb_path.parent)}}, store_widget_state=True,
                    record_timing=False, allow_errors=False)
    client.flags = tuple(flags) if flags is not None else SKIP_FLAGS
    t0 = time.monotonic()
    client.deadline = t0 + timeout
    old = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = INLINE  # the kernel inherits it: figures are displayed, not swallowed by Agg
    try: client.execute()
    finally:
        if old is None: os.environ.pop("MPLBACKEND", None)
        else: os.environ["MPLBACKEND"] = old
    # nbclient needs the widget state while it runs (its Output-widget capture reads it), but the state is not
    # committed: it duplicates every figure drawn inside a widget, and widgets need a live kernel anyway.
    nb.metadata.pop("widgets", None)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:  # write and clean beside, then replace: a failure leaves the file as it was
        tmp = Path(d) / out_path.name
        nbformat.write(nb, str(tmp))
        clean(tmp)
        shutil.copyfile(tmp, out_path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    n_img = sum(1 for c in code for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    return dict(notebook=str(nb_path), written=str(out_path), seconds=round(time.monotonic() - t0, 1),
                cells=len(code), skipped=client.skipped, images=n_img)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="*", help="notebooks to execute (default: every lesson notebook of --nbs)")
    ap.add_argument("--nbs", default=str(NBS), help="notebook folder whose lesson notebooks run when none is named")
    ap.add_argument("-o", "--out", default=None, help="write the executed notebooks into this folder (paths kept "
                    "relative to --nbs) instead of in place")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per notebook, all its cells together (default 600)")
    a = ap.parse_args(argv)
    nbs = Path(a.nbs).resolve()
    paths = [Path(p).resolve() for p in a.notebooks] or lesson_notebooks(nbs)
    bad = [p for p in paths if p.name.startswith("repro_")]
    if bad: ap.error(f"repro notebooks stay without outputs and are never executed: {', '.join(map(str, bad))}")
    missing = [p for p in paths if not p.is_file()]
    if missing: ap.error(f"no such notebook: {', '.join(map(str, missing))}")
    failed = []
    for p in paths:
        rel = p.relative_to(nbs) if p.is_relative_to(nbs) else Path(p.name)
        out = Path(a.out).resolve() / rel if a.out else None
        try:
            s = execute(p, out, a.timeout)
            print(f"{rel}: {s['seconds']:.0f} s, {s['cells']} code cells ({s['skipped']} skipped), {s['images']} figures", flush=True)
        except Exception as e:  # noqa: BLE001  (report every failure, then exit 1)
            failed.append(str(rel))
            print(f"{rel}: FAILED, left unchanged: {type(e).__name__}: {str(e)[-1500:]}", file=sys.stderr, flush=True)
    if failed: print(f"{len(failed)} notebook(s) failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

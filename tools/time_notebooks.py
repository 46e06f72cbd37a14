"""Time every notebook under nbdev-test (as CI runs them) and write a JSON that `nbs/teaching.ipynb` renders.

    python tools/time_notebooks.py                          # all notebooks that tests/test_notebooks.py runs
    python tools/time_notebooks.py nbs/11_mae.ipynb -o /tmp/t.json
    OMP_NUM_THREADS=1 python tools/time_notebooks.py --overwrite   # replace benchmarks/timing/notebook_times.json
    python tools/time_notebooks.py nbs/60_explorers.ipynb --update  # re-time some notebooks, keep the other rows

Each notebook runs in its own `nbdev-test` process (slow/gpu cells skipped). Recorded per notebook: wall seconds,
CPU seconds of the process and its children (user + system; on a busy machine this is closer to what an idle one
would take than the wall time), whether it passed, and the load average before and after. The machine (CPU model,
cores, memory), the thread settings and the package versions are recorded too. A contributor's tool, not part of the
package.
"""
from __future__ import annotations
import argparse, datetime, json, os, platform, resource, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
DEFAULT_OUT = ROOT / "benchmarks" / "timing" / "notebook_times.json"


def default_notebooks() -> list[Path]:
    "The notebooks tests/test_notebooks.py runs: every .ipynb under nbs/ except repro_*, _* and checkpoints."
    return sorted(p for p in NBS.rglob("*.ipynb")
                  if not p.name.startswith(("repro_", "_", ".")) and ".ipynb_checkpoints" not in p.parts)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"): return line.split(":", 1)[1].strip()
    except OSError: pass
    return platform.processor() or "unknown"


def _mem_gb() -> float | None:
    try:
        kb = next(int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal"))
        return round(kb / 2 ** 20, 1)
    except (OSError, StopIteration): return None


def machine_info() -> dict:
    "CPU model, core count, memory, OS, Python/torch versions and thread settings of this machine."
    import torch
    return dict(cpu_model=_cpu_model(), n_cpus=os.cpu_count(), memory_gb=_mem_gb(), os=platform.platform(),
                python=platform.python_version(), torch=torch.__version__, torch_threads=torch.get_num_threads(),
                OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS"), gpu=torch.cuda.is_available())


def time_notebook(nb: Path, timeout: float = 900) -> dict:
    "Run `nbdev-test nb` once; wall and child CPU seconds, pass/fail, load averages."
    exe = Path(sys.executable).parent / "nbdev-test"
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONWARNINGS="ignore")
    env.pop("IN_TEST", None)
    when = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    load0, ru0, t0 = os.getloadavg(), resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    try:
        r = subprocess.run([str(exe), str(nb)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        ok, err = r.returncode == 0, (r.stderr or r.stdout)[-500:] if r.returncode else None
    except subprocess.TimeoutExpired:
        ok, err = False, f"timed out after {timeout} s"
    wall, ru1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return dict(notebook=str(nb.relative_to(ROOT)), measured_utc=when, wall_s=round(wall, 1), cpu_s=round(cpu, 1), ok=ok,
                load_before=[round(x, 2) for x in load0], load_after=[round(x, 2) for x in os.getloadavg()],
                **({"error": err} if err else {}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("notebooks", nargs="*", help="notebooks to time (default: every notebook nbdev-test runs in CI)")
    ap.add_argument("-o", "--out", default=str(DEFAULT_OUT), help=f"JSON to write (default {DEFAULT_OUT.relative_to(ROOT)})")
    ap.add_argument("--overwrite", action="store_true", help="replace an existing JSON")
    ap.add_argument("--update", action="store_true", help="re-time the named notebooks in an existing JSON, keep the other rows")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per notebook")
    ap.add_argument("--note", default="", help="free text saved with the results (e.g. 'shared machine, 6 users')")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from uad_notebooks.core import write_json, cache_dir
    out = Path(a.out)
    old = json.loads(out.read_text()) if a.update and out.exists() else None
    if a.update and (old is None or not a.notebooks):
        print("time_notebooks: --update needs an existing JSON and the notebooks to re-time", file=sys.stderr)
        return 1
    if out.exists() and not (a.overwrite or a.update):
        print(f"time_notebooks: {out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 1
    nbs = [Path(p).resolve() for p in a.notebooks] or default_notebooks()
    missing = [str(p) for p in nbs if not p.is_file()]
    if missing:
        print(f"time_notebooks: no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 1
    started = datetime.datetime.now(datetime.timezone.utc)
    demo_cached = cache_dir("demo").exists() and any(cache_dir("demo").iterdir())
    rows = []
    for i, nb in enumerate(nbs, 1):
        row = time_notebook(nb, a.timeout)
        rows.append(row)
        print(f"[{i}/{len(nbs)}] {row['notebook']}: wall {row['wall_s']:.0f} s, cpu {row['cpu_s']:.0f} s, "
              f"{'ok' if row['ok'] else 'FAILED'}, load {row['load_before'][0]:.1f}", flush=True)
    if old is not None:
        new = {r["notebook"]: r for r in rows}
        rows = [new.pop(r["notebook"], r) for r in old["notebooks"]] + list(new.values())
        a.note = (old.get("note", "").rstrip(". ") + f". Re-timed {started.isoformat(timespec='seconds')}: {', '.join(sorted(str(p.relative_to(ROOT)) for p in nbs))}"
                  + (f" ({a.note})" if a.note else "") + ".").strip()
        started = datetime.datetime.fromisoformat(old["started_utc"])
        demo_cached = old["demo_cache_present_at_start"]
    res = dict(command="nbdev-test <notebook> (one process per notebook; slow/gpu cells skipped)",
               started_utc=started.isoformat(timespec="seconds"),
               finished_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               machine=machine_info(), demo_cache_present_at_start=demo_cached, note=a.note,
               total_wall_s=round(sum(r["wall_s"] for r in rows), 1), total_cpu_s=round(sum(r["cpu_s"] for r in rows), 1),
               notebooks=rows)
    write_json(res, out, overwrite=a.overwrite or a.update)
    print(f"wrote {out}: {len(rows)} notebooks, {sum(not r['ok'] for r in rows)} failed, "
          f"total wall {res['total_wall_s']:.0f} s, cpu {res['total_cpu_s']:.0f} s")
    return 0 if all(r["ok"] for r in rows) else 2


if __name__ == "__main__":
    sys.exit(main())

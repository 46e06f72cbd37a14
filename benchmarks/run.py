"""Speed and memory of every method, side by side: one command, results as JSON, a markdown table and a plot.

    .venv/bin/python -m benchmarks.run --out benchmarks/results            # the full run (about 15 min on 2 CPU cores)
    .venv/bin/python -m benchmarks.run --quick --out /tmp/bench            # tiny sizes, checks the harness

Every case runs in a fresh Python process (`benchmarks.case`), so one case's peak memory never mixes with another's.
Result files are named by device and UTC time and are never overwritten.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ("baseline_ae", "mae_uad", "memmc_mae", "perceptual_ae", "mddpm")
SECTIONS = ("peak", "methods", "scaling", "compare", "pixel", "switches")
PIXEL_IMPLS = ("ours", "sklearn", "torchmetrics_exact", "torchmetrics_binned")

# ---------------------------------------------------------------- arguments

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default="benchmarks/results", help="folder for <device>_<UTC time>.json/.md/.png")
    p.add_argument("--quick", action="store_true", help="tiny sizes and 1-2 steps: checks the harness, numbers mean little")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    p.add_argument("--device", default="auto", help="'auto' (cuda when available), 'cpu', 'cuda' or 'cuda:N'")
    p.add_argument("--steps", type=int, default=None, help="timed steps per demo-preset case (default 5; quick 1)")
    p.add_argument("--paper-steps", type=int, default=None, help="timed steps per paper-preset case (default 2 on CPU, 10 on GPU)")
    p.add_argument("--cpu-train-cap", type=int, default=8, help="on CPU, paper-preset training batches are capped at this")
    p.add_argument("--cpu-infer-cap", type=int, default=4, help="on CPU, paper-preset inference batches are capped at this")
    p.add_argument("--pixel-sizes", default=None, help="pixel counts for the metric comparison (default 1e6,1e7,1e8; quick 1e5)")
    p.add_argument("--max-call-s", type=float, default=30.0,
                   help="skip a pixel-metric implementation when its time extrapolated from the previous size exceeds this")
    p.add_argument("--case-timeout", type=int, default=900, help="seconds before one case's process is stopped")
    p.add_argument("--switch-timeout", type=int, default=240, help="seconds before a switch case (bf16, compile, ...) is stopped")
    p.add_argument("--threads", type=int, default=None, help="torch threads per case (default: torch's default)")
    p.add_argument("--tag", default="", help="appended to the result file names")
    p.add_argument("--in-process", action="store_true",
                   help="run cases in this process (fast, for tests): peak-memory numbers then mix across cases")
    p.add_argument("--no-plot", action="store_true", help="skip the matplotlib figure")
    a = p.parse_args(argv)
    a.methods = _subset(a.methods, METHODS, "--methods")
    a.sections = _subset(a.sections, SECTIONS, "--sections")
    a.pixel_sizes = [int(float(v)) for v in (a.pixel_sizes or ("1e5" if a.quick else "1e6,1e7,1e8")).split(",") if v]
    for n in a.pixel_sizes:
        if n <= 0 or n % 10_000: raise SystemExit(f"--pixel-sizes: {n} must be a positive multiple of 10000 (100x100 maps)")
    return a

def _subset(value, allowed, flag):
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items: raise SystemExit(f"{flag}: unknown {bad or value!r}; choose from {','.join(allowed)}")
    return items

def resolve_device(device: str) -> str:
    import torch
    if device == "auto": return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available(): raise SystemExit(f"--device {device}: CUDA is not available")
    if device != "cpu" and not device.startswith("cuda"): raise SystemExit(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    return device

# ---------------------------------------------------------------- machine and provenance

def _cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"): return line.split(":", 1)[1].strip()
    except OSError: pass
    return platform.processor() or platform.machine()

def _version(mod):
    try: return __import__(mod).__version__
    except Exception: return None

def machine_info(device: str) -> dict:
    import torch
    from uad_notebooks.core import git_commit
    info = dict(cpu_model=_cpu_model(), cpu_count=os.cpu_count(), torch_threads_default=torch.get_num_threads(),
                platform=platform.platform(), python=platform.python_version(), device=device,
                versions={m: _version(m) for m in ("torch", "timm", "diffusers", "torchmetrics", "sklearn", "numpy")},
                git_commit=git_commit(REPO), cuda_available=torch.cuda.is_available())
    if device.startswith("cuda"):
        info.update(gpu_name=torch.cuda.get_device_name(device), cuda_version=torch.version.cuda)
    return info

def loadavg():
    try: return [float(v) for v in open("/proc/loadavg").read().split()[:3]]
    except OSError: return None

def device_tag(device: str, info: dict) -> str:
    if device.startswith("cuda"): name = info.get("gpu_name", "cuda")
    else: name = f"cpu{info['cpu_count']}"
    return "".join(c if c.isalnum() else "-" for c in name).strip("-").lower()

# ---------------------------------------------------------------- running cases

def run_case(spec: dict, args, timeout: int | None = None) -> dict:
    "Run one case in a fresh process (or in this one with --in-process); never raises: failures become records."
    spec = dict(spec, device=args.device_resolved, **({"threads": args.threads} if args.threads else {}))
    t0 = time.time()
    if args.in_process:
        from benchmarks.case import run_spec
        import torch
        try: res = dict(run_spec(spec), status="ok", torch_threads=torch.get_num_threads())
        except Exception as e: res = dict(status="error", error=f"{type(e).__name__}: {e}")
    else:
        from benchmarks.case import MARK
        try:
            p = subprocess.run([sys.executable, "-m", "benchmarks.case", json.dumps(spec)], cwd=REPO, capture_output=True,
                               text=True, timeout=timeout or args.case_timeout)
            lines = [l for l in p.stdout.splitlines() if l.startswith(MARK)]
            if p.returncode == 0 and lines: res = dict(json.loads(lines[-1][len(MARK):]), status="ok")
            else: res = dict(status="error", error=(p.stderr.strip().splitlines() or ["no output"])[-1][:500])
        except subprocess.TimeoutExpired:
            res = dict(status="timeout", error=f"stopped after {timeout or args.case_timeout} s")
    return dict(spec=spec, wall_s=time.time() - t0, **res)

def _bar(total, desc):
    from tqdm.auto import tqdm
    return tqdm(total=total, desc=desc, leave=False)

def _quick_img(method, args):
    "Quick mode shrinks images to 32 px where the preset allows it (PerceptualAE's presets are fixed at 64)."
    return 32 if (args.quick and method != "perceptual_ae") else None

def plan_methods(args) -> list[dict]:
    "Train and inference cases of each method at its demo and paper preset (paper batches capped on CPU)."
    from benchmarks.case import _presets, INFER_BATCH
    presets, cpu, specs = _presets(), not args.device_resolved.startswith("cuda"), []
    for m in args.methods:
        for preset, (_, size, train_batch, _src) in presets[m].items():
            if args.quick and preset != "demo": continue
            stages = ["mae", "classifier"] if m == "mae_uad" else [None]
            paper = preset == "paper"
            steps = args.paper_steps if paper else args.steps
            tb = min(train_batch, args.cpu_train_cap) if (paper and cpu) else train_batch
            ib = min(INFER_BATCH, args.cpu_infer_cap) if (paper and cpu) else INFER_BATCH
            if args.quick: tb = ib = 2
            img = _quick_img(m, args)
            for st in stages:
                specs.append(dict(kind="method", method=m, preset=preset, mode="train", stage=st, batch=tb, steps=steps,
                                  img_size=img, capped=tb < train_batch))
            specs.append(dict(kind="method", method=m, preset=preset, mode="infer", batch=ib, steps=steps, img_size=img,
                              capped=ib < INFER_BATCH))
    return specs

def plan_scaling(args) -> list[dict]:
    "Time and memory vs image size (MAE-UAD demo, MaskedDDPM demo) and vs batch size (ConvAE, MAE-UAD demo)."
    specs = []
    sizes = (32, 64) if args.quick else (64, 128, 224)
    for m in ("mae_uad", "mddpm"):
        if m not in args.methods: continue
        for s in sizes:
            specs.append(dict(kind="method", method=m, preset="demo", mode="train", stage="mae" if m == "mae_uad" else None,
                              batch=2 if args.quick else 8, steps=args.steps if args.quick else 3, img_size=s, axis="img_size"))
    batches = (2, 4) if args.quick else (8, 32, 128)
    for m in ("baseline_ae", "mae_uad"):
        if m not in args.methods: continue
        for b in batches:
            specs.append(dict(kind="method", method=m, preset="demo", mode="train", stage="mae" if m == "mae_uad" else None,
                              batch=b, steps=args.steps if args.quick else 3, img_size=_quick_img(m, args), axis="batch"))
    return specs

def plan_compare(args) -> list[dict]:
    cpu = not args.device_resolved.startswith("cuda")
    specs = []
    for kind, configs in (("vit", ("demo", "vit_b16_224")), ("unet", ("small", "paper"))):
        for c in configs:
            if args.quick and c not in ("demo", "small"): continue
            big = c in ("vit_b16_224", "paper")
            for mode in ("train", "infer"):
                b = 2 if args.quick else (4 if (big and cpu) else (64 if not cpu else 16))
                specs.append(dict(kind=kind, config=c, mode=mode, batch=b,
                                  steps=1 if args.quick else (3 if big and cpu else max(5, args.steps))))
    return specs

def plan_switches(args) -> tuple[list[dict], list[dict]]:
    "(cases to run, switches skipped with a reason)."
    from benchmarks.case import CONV_METHODS
    cuda = args.device_resolved.startswith("cuda")
    run, skipped = [], []
    base = dict(kind="method", preset="demo", mode="train", steps=args.steps)
    for m in args.methods:
        b, base["img_size"] = (2 if args.quick else 32), _quick_img(m, args)
        st = "mae" if m == "mae_uad" else None
        run.append(dict(base, method=m, stage=st, batch=b, switch="fp32"))  # the reference, measured next to its switches
        run.append(dict(base, method=m, stage=st, batch=b, bf16=True, switch="bf16"))
        if m in CONV_METHODS: run.append(dict(base, method=m, stage=st, batch=b, channels_last=True, switch="channels_last"))
        else: skipped.append(dict(method=m, switch="channels_last", reason="transformer: only the patch-embedding convolution would change layout"))
        if cuda or (m == "baseline_ae" and not args.quick):
            run.append(dict(base, method=m, stage=st, batch=b, compile=True, switch="compile"))
        else:
            skipped.append(dict(method=m, switch="compile", reason="quick mode" if args.quick else
                                "CPU: inductor compiles C++ for minutes per model on 2 shared cores; probed on the baseline only"))
    if cuda and "mae_uad" in args.methods and not args.quick:  # the target: ViT-B/16 224 MAE training in bf16
        run.append(dict(kind="method", method="mae_uad", preset="paper", mode="train", stage="mae", batch=128,
                        steps=args.paper_steps, bf16=True, switch="bf16"))
    return run, skipped

def _pixel_impls_for(n, prev, args):
    run, skipped = [], []
    for impl in PIXEL_IMPLS:
        if prev is None or impl == "ours": run.append(impl); continue
        r = prev["results"].get(impl)
        if r is None:
            skipped.append(dict(impl=impl, n_pixels=n, reason=f"skipped at {prev['n_pixels']:.0e} already")); continue
        est = r["median_s"] * n / prev["n_pixels"]
        if est > args.max_call_s:
            skipped.append(dict(impl=impl, n_pixels=n, reason=f"estimated {est:.0f} s (> --max-call-s {args.max_call_s:.0f}) "
                                f"from {r['median_s']:.2f} s at {prev['n_pixels']:.0e} pixels, scaled linearly"))
        else: run.append(impl)
    return run, skipped

# ---------------------------------------------------------------- main

def main(argv=None):
    args = parse_args(argv)
    sys.path.insert(0, str(REPO))
    args.device_resolved = resolve_device(args.device)
    if args.steps is None: args.steps = 1 if args.quick else 5
    if args.paper_steps is None: args.paper_steps = 2 if not args.device_resolved.startswith("cuda") else 10
    from benchmarks.report import result_paths, check_free, write_results
    info = machine_info(args.device_resolved)
    stamp = datetime.datetime.now(datetime.timezone.utc)
    paths = result_paths(args.out, device_tag(args.device_resolved, info), stamp, args.tag + ("-quick" if args.quick else ""))
    check_free(paths)  # refuse before spending any time
    cpu = not args.device_resolved.startswith("cuda")
    res = dict(command=" ".join([Path(sys.executable).name, "-m", "benchmarks.run"] + (sys.argv[1:] if argv is None else list(argv))),
               created_at=stamp.isoformat(timespec="seconds"), quick=args.quick, machine=info,
               settings=dict(device=args.device_resolved, steps=args.steps, paper_steps=args.paper_steps,
                             cpu_train_cap=args.cpu_train_cap, cpu_infer_cap=args.cpu_infer_cap, threads=args.threads,
                             in_process=args.in_process, methods=args.methods, sections=args.sections),
               loadavg_before=loadavg())
    t_start = time.time()
    mm = 256 if args.quick else (2048 if cpu else 8192)
    dtypes = ["float32", "bfloat16"]
    if "peak" in args.sections:
        res["peak"] = {dt: run_case(dict(kind="matmul", dtype=dt, n=mm, repeats=3 if args.quick else 5), args) for dt in dtypes}
    partial = paths["json"].with_name(paths["json"].stem + ".partial.json")
    def save_partial():  # a long run keeps what it measured so far, even if it is stopped
        from uad_notebooks.core import write_json
        write_json(res, partial, overwrite=True)
    for section, planner in (("methods", plan_methods), ("scaling", plan_scaling), ("compare", plan_compare)):
        if section not in args.sections: continue
        specs = planner(args); bar = _bar(len(specs), section); res[section] = []
        for s in specs: res[section].append(run_case(s, args)); bar.update(1); save_partial()
        bar.close()
    if "pixel" in args.sections:
        res["pixel"], res["pixel_skipped"], prev = [], [], None
        bar = _bar(len(args.pixel_sizes), "pixel metrics")
        for n in args.pixel_sizes:
            impls, skipped = _pixel_impls_for(n, prev, args)
            res["pixel_skipped"] += skipped
            r = run_case(dict(kind="pixel", n_pixels=n, impls=impls, repeats=3 if n <= 1_000_000 else 1), args)
            res["pixel"].append(r); bar.update(1); save_partial()
            if r["status"] == "ok": prev = r
        bar.close()
    if "switches" in args.sections:
        specs, skipped = plan_switches(args); bar = _bar(len(specs), "switches")
        res["switches"], res["switches_skipped"] = [], skipped
        for s in specs: res["switches"].append(run_case(s, args, timeout=args.switch_timeout)); bar.update(1); save_partial()
        bar.close()
    if "peak" in args.sections:  # again at the end: the machine's load may have changed
        res["peak_after"] = {dt: run_case(dict(kind="matmul", dtype=dt, n=mm, repeats=3 if args.quick else 5), args)
                             for dt in dtypes}
    res["loadavg_after"], res["total_s"] = loadavg(), time.time() - t_start
    written = write_results(res, paths, plot=not args.no_plot)
    partial.unlink(missing_ok=True)
    for p in written: print(f"wrote {p}")
    return res, written

if __name__ == "__main__": main()

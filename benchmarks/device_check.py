"""One prepared check of every CUDA path, rehearsed on the CPU (issue 15).

    bash benchmarks/device_check.sh                         # on the GPU machine: installs the carried wheels, then `run`
    python -m benchmarks.device_check run --device cpu --quick --out /tmp/dc    # the CPU rehearsal the test suite runs
    python -m benchmarks.device_check bundle                # here, before a device call: wheels + demo cache (.device_bundle/)

`run` executes five steps, each with its own time limit, each recorded passed / failed with its figures:

  env        GPU model and memory, CUDA / cuDNN / NCCL / torch versions, fp32 and bf16 matmul peak
             (`benchmarks.case.run_matmul`), the demo data and the notebook runner available offline
  notebooks  every nbs/repro_*.ipynb under papermill with `-p smoke True -p device <device>`
  train      `uad_notebooks.train.train` per method with AMP off and on, a SIGKILL-and-resume that must continue
             the uninterrupted loss sequence, and `torch.compile` on one method
  ddp        the same `train` call under `torchrun --nproc_per_node 1` (NCCL on CUDA, gloo on CPU)
  bench      `python -m benchmarks.run` on the paper presets at their batch sizes (switches, then methods sections)

Notebooks, train and ddp run side by side (they check correctness); env and bench run alone (they time things).
Results: <out>/summary.json, <out>/summary.md and <out>/device_check_logs.tar.gz (logs, executed notebooks,
metrics.json files, benchmark results), rewritten after every step so that a run stopped from outside keeps what it
measured. The exit status is 1 when any selected step failed or did not run.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NBS = REPO / "nbs"
MARK = "DEVICE_CHECK_RESULT "
STEPS = ("env", "notebooks", "train", "ddp", "bench")
METHODS = ("baseline_ae", "mae_uad", "memmc_mae", "perceptual_ae", "mddpm")  # as benchmarks.run names them
DDP_LEFT_OUT: dict = {}  # method -> why the ddp step leaves it out (none today: PerceptualAE sets ddp_find_unused_parameters)
ARCHIVE = "device_check_logs.tar.gz"
ARCHIVE_LIMIT = 15 * 2 ** 20      # the device tool returns files of at most 16 MiB
SKIP_SUFFIXES = (".pt", ".pth", ".npz", ".tmp")  # checkpoints and caches stay out of the archive

# ================================================================ settings

def settings(device: str, quick: bool) -> dict:
    "Sizes, step counts and time limits (seconds) of every step for this device and mode."
    cuda = device.startswith("cuda")
    if quick:
        s = dict(img=32, train_steps=3, batch=8, subset=24, resume=dict(steps=6, ckpt_every=2, kill_at=5),
                 compile=dict(method="baseline_ae", backend="aot_eager", steps=3), ddp_steps=3,
                 notebooks=["repro_baseline_ae"], matmul_n=256, matmul_repeats=3, jobs=2, threads=1,
                 bench_methods=["baseline_ae"], bench_switch_methods=["baseline_ae"], bench_in_process=True, budget_s=1500,
                 timeouts=dict(env=300, job=600, phase=900, bench_switches=400, bench_methods=400))  # generous: shared CPUs
    else:
        s = dict(img=64, train_steps=20, batch=32, subset=None, resume=dict(steps=12, ckpt_every=4, kill_at=10),
                 # the baseline: one graph, a short inductor compile; MAE-UAD's augmentation recompiles (dynamic shapes),
                 # and the bench step's `compile` switch times torch.compile on MAE-UAD anyway
                 compile=dict(method="baseline_ae", backend="inductor", steps=20), ddp_steps=10,
                 notebooks=None, matmul_n=8192 if cuda else 2048, matmul_repeats=10 if cuda else 5,
                 jobs=8 if cuda else 2, threads=2 if cuda else 1,
                 bench_methods=list(METHODS), bench_switch_methods=["mae_uad"], bench_in_process=False,
                 budget_s=480 if cuda else 3600,
                 timeouts=dict(env=150, job=200, phase=200, bench_switches=260, bench_methods=330))
    s.update(resume_amp=[True, False] if cuda else [True],
             # relative loss tolerances: AMP (bf16) runs; fp32 runs (CUDA keeps a few atomic-add kernels nondeterministic)
             tol=dict(amp=1e-2, fp32=1e-4 if cuda else 1e-5, compile=2e-2, amp_vs_fp32=0.1))
    return s

# ================================================================ records, summary, exit code

def check(name: str, ok: bool, detail="") -> dict:
    return dict(name=name, ok=bool(ok), detail=str(detail))

def step_record(step: str, title: str = "") -> dict:
    return dict(step=step, title=title, status="not run", seconds=None, checks=[], figures={}, tables=[], error=None)

def finish(rec: dict, seconds: float | None = None) -> dict:
    "A step passes when it has checks, all of them hold, and no error was raised."
    if seconds is not None: rec["seconds"] = round(seconds, 2)
    bad = nonfinite_paths(rec["figures"])
    if bad: rec["checks"].append(check("every figure is finite", False, ", ".join(bad[:10])))
    ok = rec["checks"] and all(c["ok"] for c in rec["checks"]) and rec["error"] is None
    rec["status"] = "passed" if ok else "failed"
    return rec

def nonfinite_paths(obj, prefix: str = "") -> list[str]:
    "Paths (a.b[2]) of the NaN / infinite numbers inside nested dicts and lists."
    if isinstance(obj, bool) or obj is None: return []
    if isinstance(obj, (int, float)): return [] if math.isfinite(obj) else [prefix or "."]
    if isinstance(obj, dict): return [p for k, v in obj.items() for p in nonfinite_paths(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(obj, (list, tuple)): return [p for i, v in enumerate(obj) for p in nonfinite_paths(v, f"{prefix}[{i}]")]
    return []

def exit_code(summary: dict) -> int:
    "0 when every selected step passed, else 1."
    return 0 if summary["steps"] and all(r["status"] == "passed" for r in summary["steps"]) else 1

def _jsonable(o):
    if isinstance(o, dict): return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple, set)): return [_jsonable(v) for v in o]
    if isinstance(o, (str, int, float, bool)) or o is None: return o
    if isinstance(o, Path): return str(o)
    if hasattr(o, "item") and getattr(o, "ndim", 1) == 0: return o.item()  # numpy / torch scalars
    if hasattr(o, "tolist"): return o.tolist()
    return str(o)

def write_summary(summary: dict, out: Path) -> list[Path]:
    "Write <out>/summary.json and <out>/summary.md atomically (rewritten after each step)."
    out.mkdir(parents=True, exist_ok=True)
    summary["passed"] = exit_code(summary) == 0
    summary["failed_steps"] = [r["step"] for r in summary["steps"] if r["status"] != "passed"]
    paths = []
    for name, text in (("summary.json", json.dumps(_jsonable(summary), indent=1)), ("summary.md", markdown(summary))):
        p = out / name; tmp = p.with_name(f".{name}.tmp")
        tmp.write_text(text); os.replace(tmp, p); paths.append(p)
    return paths

def _fmt(v) -> str:
    if isinstance(v, bool): return "yes" if v else "no"
    if isinstance(v, float):
        if not math.isfinite(v): return str(v)
        a = abs(v)
        return f"{v:.3g}" if (a < 0.01 and a > 0) or a >= 1e5 else (f"{v:.4f}" if a < 1 else f"{v:.1f}" if a < 1e4 else f"{v:.0f}")
    if v is None: return ""
    return str(v).replace("|", "/").replace("\n", " ")

def _table(cols: list[str], rows: list[list]) -> str:
    return "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)] + ["| " + " | ".join(_fmt(v) for v in r) + " |" for r in rows])

def _flat(obj, prefix: str = "") -> list[tuple[str, object]]:
    if isinstance(obj, dict):
        return [kv for k, v in obj.items() for kv in _flat(v, f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(obj, list) and obj and all(isinstance(v, (int, float, str, bool)) or v is None for v in obj):
        return [(prefix, ", ".join(_fmt(v) for v in obj[:12]) + (" ..." if len(obj) > 12 else ""))]
    if isinstance(obj, list): return [kv for i, v in enumerate(obj) for kv in _flat(v, f"{prefix}[{i}]")]
    return [(prefix, obj)]

def markdown(summary: dict) -> str:
    "The human-readable summary: one line per step, then each step's checks, tables and figures."
    m = summary.get("machine") or {}
    head = m.get("gpu_name") or m.get("cpu_model") or summary["device"]
    L = [f"# Device check on {head} ({summary['device']}{', quick' if summary.get('quick') else ''}): "
         f"{'PASSED' if summary.get('passed') else 'FAILED'}", "",
         f"- created {summary['created_at']}, commit `{summary.get('git_commit')}`, {summary.get('total_s', 0):.0f} s "
         f"of a {summary['settings']['budget_s']:.0f} s budget, "
         f"{summary.get('cpu_s_children', 0):.0f} CPU s in child processes",
         f"- command: `{summary['command']}`",
         f"- torch {m.get('torch')}, CUDA {m.get('cuda_build')}, Python {m.get('python')}", ""]
    rows = []
    for r in summary["steps"]:
        n_ok = sum(c["ok"] for c in r["checks"])
        rows.append([r["step"], r["status"].upper() if r["status"] != "passed" else "passed", r["seconds"],
                     f"{n_ok}/{len(r['checks'])}", r["title"]])
    L += [_table(["step", "status", "seconds", "checks ok", "what"], rows), ""]
    for r in summary["steps"]:
        L += [f"## {r['step']}: {r['status']}", ""]
        if r["status"] == "not run" and not r["error"]: L += ["(not reached)", ""]
        if r["error"]: L += ["```", r["error"][-3000:], "```", ""]
        if r["checks"]:
            L += [_table(["check", "ok", "detail"], [[c["name"], c["ok"], c["detail"][:400]] for c in r["checks"]]), ""]
        for t in r["tables"]:
            L += [f"**{t['title']}**", "", _table(t["columns"], t["rows"]), ""]
        flat = [(k, v) for k, v in _flat(r["figures"]) if not isinstance(v, (dict, list))]
        if flat:
            L += ["<details><summary>figures</summary>", "", _table(["figure", "value"], [[k, v] for k, v in flat[:150]])]
            if len(flat) > 150: L.append(f"\n({len(flat) - 150} more in summary.json)")
            L += ["", "</details>", ""]
    if summary.get("jobs"):
        L += ["## jobs (child processes)", "", _table(["job", "exit", "seconds", "CPU seconds", "stopped at its limit", "log (in the archive)"],
              [[j["name"], j["exit"] if j["started"] else "not started", j["seconds"], j["cpu_s"], j["stopped_at_limit"], j["log"]]
               for j in summary["jobs"]]), ""]
    return "\n".join(L)

# ================================================================ running jobs side by side

class Job:
    "One child process: argv, its time limit and log file; after `run_jobs` its exit status, seconds and result."
    def __init__(self, name: str, argv: list, timeout: float, log: Path, env: dict | None = None, cwd: Path = REPO):
        self.name, self.argv, self.timeout, self.log, self.env, self.cwd = name, [str(a) for a in argv], timeout, Path(log), env, cwd
        self.proc = self.t0 = self.seconds = self.returncode = self.result = self.cpu_s = None
        self.timed_out, self.started = False, False

    def start(self):
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.log, "w")
        self._fh.write("$ " + " ".join(self.argv) + "\n"); self._fh.flush()
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=self._fh, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.t0, self.started = time.time(), True

    def poll(self):
        "Reap the child when it has ended; its CPU seconds (with its reaped descendants') are the rusage difference."
        if self.proc.returncode is not None: return self.proc.returncode
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        rc = self.proc.poll()
        if rc is not None:
            ru2 = resource.getrusage(resource.RUSAGE_CHILDREN)
            self.cpu_s = (ru2.ru_utime + ru2.ru_stime) - (ru.ru_utime + ru.ru_stime)
        return rc

    def stop(self):
        "SIGINT first (papermill then shuts its kernel down), then SIGKILL to the child and every descendant."
        pids = _descendants(self.proc.pid)
        try: os.killpg(self.proc.pid, signal.SIGINT)
        except OSError: pass
        for _ in range(40):  # up to 8 s
            if self.poll() is not None: break
            time.sleep(0.2)
        for pid in [self.proc.pid] + pids + _descendants(self.proc.pid):
            try: os.kill(pid, signal.SIGKILL)
            except OSError: pass
        try: os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError: pass
        while self.poll() is None: time.sleep(0.05)

    def finish(self):
        self.seconds = time.time() - self.t0
        self.returncode = self.proc.returncode
        self._fh.close()
        self.result = parse_result(self.log.read_text(errors="replace"))

    def tail(self, n: int = 1500) -> str:
        try: return self.log.read_text(errors="replace")[-n:]
        except OSError: return ""

def _descendants(pid: int) -> list[int]:
    try:
        import psutil
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except Exception: return []

def parse_result(text: str):
    "The JSON of the last `DEVICE_CHECK_RESULT {...}` line of a worker's output, or None."
    lines = [l for l in text.splitlines() if l.startswith(MARK)]
    return json.loads(lines[-1][len(MARK):]) if lines else None

def run_jobs(jobs: list[Job], parallel: int, deadline: float) -> list[Job]:
    "Run `jobs` at most `parallel` at a time; each stops at its own limit or at `deadline` (epoch seconds)."
    pending, running = list(jobs), []
    while pending or running:
        while pending and len(running) < parallel and time.time() < deadline - 5:
            j = pending.pop(0); j.start(); running.append(j)
            print(f"  start {j.name}", flush=True)
        if not running and pending:  # out of time before these could start
            for j in pending: j.timed_out = True
            break
        for j in list(running):
            if j.poll() is None and (time.time() - j.t0 > j.timeout or time.time() > deadline):
                j.timed_out = True; j.stop()
            if j.proc.returncode is not None:
                j.finish(); running.remove(j)
                print(f"  done  {j.name}: exit {j.returncode}{' (stopped at its time limit)' if j.timed_out else ''}, "
                      f"{j.seconds:.1f} s, {j.cpu_s or 0:.1f} CPU s", flush=True)
        time.sleep(0.2)
    return jobs

def job_problem(j: Job) -> str | None:
    "Why a job did not deliver a result (None when it did)."
    if not j.started: return "not started: out of time"
    if j.timed_out: return f"stopped after {j.seconds:.0f} s (limit {j.timeout:.0f} s); log tail: {j.tail(600)}"
    if j.returncode != 0: return f"exit {j.returncode}; log tail: {j.tail(1200)}"
    if j.result is None: return f"no result line; log tail: {j.tail(1200)}"
    return None

# ================================================================ workers (run in child processes)

def _dev(device: str):
    import torch
    return torch.device(device)

def _sync(dev):
    import torch
    if dev.type == "cuda": torch.cuda.synchronize(dev)

def worker_env(device: str, n: int, repeats: int, demo_sizes: list, need_runner: bool) -> dict:
    "Machine, versions, matmul peaks, demo data and notebook runner availability."
    import importlib
    import importlib.metadata as md
    import torch
    from benchmarks.case import run_matmul
    out = dict(python=platform.python_version(), platform=platform.platform(), torch=torch.__version__,
               cuda_build=torch.version.cuda, cuda_available=torch.cuda.is_available(), cpu_count=os.cpu_count(),
               torch_threads=torch.get_num_threads(), device=device)
    try: out["cpu_model"] = next(l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name"))
    except Exception: out["cpu_model"] = platform.machine()
    out["versions"] = {}
    for p in ("numpy", "scipy", "scikit-learn", "matplotlib", "timm", "torchmetrics", "torchvision", "papermill",
              "nbclient", "ipykernel", "jupyter_client", "pyzmq", "nilearn"):
        try: out["versions"][p] = md.version(p)
        except md.PackageNotFoundError: out["versions"][p] = None
    problems = {}
    if device.startswith("cuda"):
        if not torch.cuda.is_available(): problems["device"] = "torch.cuda.is_available() is False"
        else:
            dev = torch.device(device)
            p = torch.cuda.get_device_properties(dev)
            out.update(gpu_name=p.name, gpu_memory_gib=p.total_memory / 2 ** 30, gpu_capability=f"{p.major}.{p.minor}",
                       gpu_multiprocessors=p.multi_processor_count, gpu_count=torch.cuda.device_count())
            for k, f in dict(cudnn=lambda: torch.backends.cudnn.version(), bf16_supported=torch.cuda.is_bf16_supported,
                             float32_matmul_precision=torch.get_float32_matmul_precision,
                             nccl=lambda: ".".join(map(str, torch.cuda.nccl.version()))).items():
                try: out[k] = f()
                except Exception as e: out[k] = f"unavailable: {type(e).__name__}: {e}"
            try:
                q = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name,memory.total", "--format=csv,noheader"],
                                   capture_output=True, text=True, timeout=20)
                out["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
            except Exception as e: out["nvidia_smi"] = f"not run: {e}"
    peaks = {}
    if "device" not in problems:
        for dt in ("float32", "bfloat16"):
            try: peaks[dt] = run_matmul(dict(device=device, dtype=dt, n=n, repeats=repeats))
            except Exception as e: problems[f"peak_{dt}"] = f"{type(e).__name__}: {e}"
    out["peak"] = {dt: dict(n=r["n"], gflops=r["gflops"], median_gflops=r["median_gflops"]) for dt, r in peaks.items()}
    # the demo data must be there without a network: nilearn's version keys the cache, its MNI152 maps are cached
    from uad_notebooks.core import cache_dir
    out["demo_cache"] = str(cache_dir("demo"))
    before = set(os.listdir(cache_dir("demo")))
    try:
        out["nilearn_metadata"] = md.version("nilearn")
        from uad_notebooks.demo import demo_arrays
        for img in demo_sizes:
            for split in ("train", "val", "test"): demo_arrays(split, img_size=int(img), size="small", progress=False)
    except Exception as e: problems["demo_data"] = f"{type(e).__name__}: {e}"
    out["demo_cache_files_before"] = len(before)
    out["demo_cache_files_built"] = sorted(set(os.listdir(cache_dir("demo"))) - before)
    if need_runner:
        out["runner_from"] = {}
        for mod in ("papermill", "nbclient", "nbformat", "jupyter_client", "ipykernel", "zmq"):
            try: out["runner_from"][mod] = str(Path(importlib.import_module(mod).__file__).parent.parent)
            except Exception as e: problems[f"import_{mod}"] = f"{type(e).__name__}: {e}"
    out["problems"] = problems
    return out

# ---------------------------------------------------------------- one short training run of a method

def _datasets(img: int, subset: int | None):
    from uad_notebooks.data import load_dataset
    def load(size):
        ds = load_dataset("demo", "train", size="small", img_size=size, progress=False)
        return ds.subset(list(range(min(subset, len(ds))))) if subset else ds
    return load

def method_plan(method: str, img: int, batch: int):
    "(model, stages) for one short run of `method` at its demo preset; a stage is (name, set_stage, data, train kwargs)."
    import torch
    if method == "baseline_ae":
        from uad_notebooks.baseline_ae import ConvAE
        return ConvAE(img_size=img), [("ae", None, img, dict(lr=1e-3))]
    if method == "mae_uad":  # as uad_notebooks.compare.fit_mae_uad: the MAE stage, then the pseudo-abnormal classifier
        from uad_notebooks.mae_uad import mae_uad_demo
        return mae_uad_demo(img_size=img), [
            ("mae", "mae", img, dict(lr=8e-3 * batch / 256, weight_decay=0.05, betas=(0.9, 0.95), schedule="cosine", warmup_steps=2)),
            ("classifier", "classifier", "classifier", dict(lr=4e-3 * batch / 256, weight_decay=0.05, schedule="cosine",
                                                           warmup_steps=1, min_lr=1e-6))]
    if method == "memmc_mae":
        from uad_notebooks.memmc_mae import memmc_mae_demo
        return memmc_mae_demo(img_size=img), [("train", None, img, dict(lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95),
                                                                        schedule="cosine", warmup_steps=2))]
    if method == "perceptual_ae":  # the demo preset is fixed at 64 px; its last fade-in and full-size stages
        from uad_notebooks.perceptual_ae import dpa_demo
        model = dpa_demo(vgg_weights="random")
        return model, [("trns64", "trns64", 64, dict(lr=1e-3)), ("stab64", "stab64", 64, dict(lr=1e-3))]
    if method == "mddpm":
        from uad_notebooks.masked_ddpm import mddpm_small
        return mddpm_small(img_size=img, variant="mddpm"), [("mddpm", None, img, dict(lr=1e-3))]
    raise ValueError(f"method {method!r} is not one of {METHODS}")

def run_method(method: str, device: str, amp, steps: int, batch: int, img: int, subset: int | None, out_dir=None,
               first_stage_only: bool = False, ckpt_every=None, kill_at: int | None = None, deterministic: bool = False,
               compile_backend: str | None = None, seed: int = 0) -> dict:
    "Build `method` (seeded), run `train` for each of its stages; per stage: steps, losses, time, memory, dtypes seen."
    import torch
    from torch import nn
    from uad_notebooks.train import train, amp_dtype
    dev = _dev(device)
    torch.manual_seed(seed)
    model, stages = method_plan(method, img, batch)
    if first_stage_only: stages = stages[:1]
    load = _datasets(img, subset)
    if method == "perceptual_ae":
        ds64 = load(64)
        model.loss.fit_stats(torch.stack([ds64[i]["image"] for i in range(min(256, len(ds64)))]))
    seen = set()  # output dtypes of the method's Linear / Conv2d layers while training (AMP: bfloat16 on CUDA)
    hooks = [m.register_forward_hook(lambda mod, i, o: seen.add(str(o.dtype).replace("torch.", "")) if torch.is_tensor(o) else None)
             for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and not n.startswith("loss.")]
    if kill_at is not None:  # a hard kill (SIGKILL) of this process just before step `kill_at` runs
        orig = getattr(model, "on_train_step", None)
        def on_train_step(step, total):
            if step == kill_at: os.kill(os.getpid(), signal.SIGKILL)
            if orig is not None: orig(step, total)
        model.on_train_step = on_train_step
    if compile_backend:
        import torch._dynamo
        torch._dynamo.reset()
        model.training_loss = torch.compile(model.training_loss, backend=compile_backend)
    before = [p.detach().float().clone() for p in model.parameters()]
    out = dict(method=method, amp=amp, autocast_dtype=str(amp_dtype(amp, dev)).replace("torch.", ""), stages=[])
    for name, set_stage, data, kw in stages:
        if set_stage: model.set_stage(set_stage)
        if data == "classifier":
            model.to(dev).eval(); ds = model.build_classifier_data(load(img), progress=False)
        else: ds = load(data)
        if dev.type == "cuda": torch.cuda.reset_peak_memory_stats(dev)
        _sync(dev); t = time.perf_counter()
        res = train(model, ds, out_dir=out_dir, stage=name, max_steps=steps, batch_size=batch, amp=amp, device=device,
                    seed=seed, log_every=1, progress=False, deterministic=deterministic, ckpt_every=ckpt_every, **kw)
        _sync(dev); sec = time.perf_counter() - t
        losses = [h["loss"] for h in res.history]
        out["stages"].append(dict(stage=name, steps=res.steps, resumed_from=res.resumed_from, losses=losses,
                                  times=[h["time"] for h in res.history], seconds=sec,
                                  images_per_s=(res.steps - res.resumed_from) * batch / sec if sec > 0 else None,
                                  cuda_max_allocated_mib=torch.cuda.max_memory_allocated(dev) / 2 ** 20 if dev.type == "cuda" else None))
    for h in hooks: h.remove()
    out["dtypes_seen"] = sorted(seen)
    out["param_change"] = float(sum((p.detach().float().cpu() - b.cpu()).abs().sum() for p, b in zip(model.parameters(), before)))
    if compile_backend:
        import torch._dynamo.utils as du
        out["dynamo_unique_graphs"] = int(du.counters["stats"]["unique_graphs"])
        out["dynamo_graph_breaks"] = int(sum(du.counters["graph_break"].values()))
    return out

def worker_train_method(method: str, device: str, steps: int, batch: int, img: int, subset) -> dict:
    "One method with AMP off, then on, from the same seeded weights and data order."
    return dict(method=method, runs=[run_method(method, device, amp, steps, batch, img, subset) for amp in (False, True)])

def worker_train_once(**kw) -> dict:
    return run_method(first_stage_only=True, deterministic=True, **kw)

def worker_resume(method: str, device: str, amp, steps: int, ckpt_every: int, kill_at: int, batch: int, img: int,
                  subset, work: str) -> dict:
    "Uninterrupted run A; run B killed (SIGKILL) after a checkpoint; B started again must continue A's losses."
    work = Path(work)
    kw = dict(method=method, device=device, amp=amp, steps=steps, batch=batch, img=img, subset=subset, ckpt_every=ckpt_every)
    def once(tag, out_dir, kill=None):
        args = dict(kw, out_dir=str(out_dir), kill_at=kill)
        p = subprocess.run([sys.executable, "-m", "benchmarks.device_check", "worker", "train_once", json.dumps(args)],
                           cwd=REPO, capture_output=True, text=True, timeout=600)
        (work / f"{tag}.log").write_text(p.stdout + p.stderr)
        return p.returncode, parse_result(p.stdout)
    work.mkdir(parents=True, exist_ok=True)
    rc_a, a = once("a_uninterrupted", work / "a")
    rc_b, _ = once("b_killed", work / "b", kill_at)
    from uad_notebooks.train import load_checkpoint
    cks = sorted((work / "b").glob("*/last.pt"))
    ck_step = int(load_checkpoint(cks[0])["step"]) if cks else None
    rc_c, c = once("c_resumed", work / "b")
    return dict(rc_uninterrupted=rc_a, rc_killed=rc_b, rc_resumed=rc_c, checkpoint_step_after_kill=ck_step,
                expected_checkpoint_step=(kill_at // ckpt_every) * ckpt_every, uninterrupted=a, resumed=c, amp=amp)

def worker_compile(method: str, device: str, backend: str, steps: int, batch: int, img: int, subset) -> dict:
    "`torch.compile(model.training_loss)` inside `train`, against the same run in eager mode."
    eager = run_method(method, device, True, steps, batch, img, subset, first_stage_only=True)
    comp = run_method(method, device, True, steps, batch, img, subset, first_stage_only=True, compile_backend=backend)
    return dict(method=method, backend=backend, eager=eager, compiled=comp)

def worker_ddp(device: str, methods: list, steps: int, batch: int, img: int, subset, work: str) -> dict:
    """Under torchrun: each method's first stage as a plain call (the process group kept off, so `train` runs it as one
    process without DistributedDataParallel), then the same call as the package makes it under torchrun: the group is
    started (even for one process) and the model wrapped in DistributedDataParallel."""
    import torch
    import torch.distributed as dist
    import uad_notebooks.train as T
    rank, local_rank, world = T.dist_info()
    built = []
    class SpyDDP(torch.nn.parallel.DistributedDataParallel):  # counts the wrappings `train` makes
        def __init__(self, *a, **k): built.append(1); super().__init__(*a, **k)
    torch.nn.parallel.DistributedDataParallel = SpyDDP
    orig_init = T.init_distributed
    def no_group(dev): return False  # the plain reference: `train` as outside torchrun
    out = dict(rank=rank, local_rank=local_rank, world_size=world, torchrun=T.under_torchrun(), methods={})
    amp = device.startswith("cuda")
    for m in methods:
        r = dict()
        try:
            T.init_distributed = no_group
            n0 = len(built)
            r["plain"] = run_method(m, device, amp, steps, batch, img, subset, first_stage_only=True, deterministic=True)
            r["plain"]["ddp_wrappings"] = len(built) - n0
            T.init_distributed = orig_init
            n0 = len(built)
            r["ddp"] = run_method(m, device, amp, steps, batch, img, subset, first_stage_only=True, deterministic=True,
                                  out_dir=str(Path(work) / m))
            r["ddp"]["ddp_wrappings"] = len(built) - n0
            r["ddp"]["backend"] = dist.get_backend() if dist.is_initialized() else None
            ck = sorted((Path(work) / m).glob("*/last.pt"))
            r["ddp"]["checkpoint_done"] = bool(ck) and bool(T.load_checkpoint(ck[0]).get("done"))
        except Exception as e:  # one method's failure must not hide the others'
            r["error"] = f"{type(e).__name__}: {str(e)[:1500]}"
        finally: T.init_distributed = orig_init
        out["methods"][m] = r
    if dist.is_initialized(): dist.destroy_process_group()
    return out if rank == 0 else None

WORKERS = dict(env=worker_env, train_method=worker_train_method, train_once=worker_train_once, resume=worker_resume,
               compile=worker_compile, ddp=worker_ddp)

def worker_main(kind: str, args_json: str):
    import warnings
    warnings.filterwarnings("ignore")
    if str(REPO) not in sys.path: sys.path.insert(0, str(REPO))
    res = WORKERS[kind](**json.loads(args_json))
    if res is not None: print(MARK + json.dumps(_jsonable(res)), flush=True)

# ================================================================ the steps (orchestrator side: no torch here)

class Ctx:
    "What every step needs: arguments, settings, folders, the deadline and the environment of child processes."
    def __init__(self, args):
        self.args, self.device, self.quick = args, args.device, args.quick
        self.cuda = args.device.startswith("cuda")
        self.s = settings(args.device, args.quick)
        if args.budget_s: self.s["budget_s"] = args.budget_s
        if args.jobs: self.s["jobs"] = args.jobs
        self.out, self.work = Path(args.out).resolve(), Path(args.work).resolve()
        self.t0 = time.time(); self.deadline = self.t0 + self.s["budget_s"]
        self.py = sys.executable
        self.env_peaks = {}
        self.jobs: list[Job] = []  # every job run, for the summary's job table

    def run(self, jobs: list[Job], parallel: int, deadline: float) -> list[Job]:
        self.jobs += jobs
        return run_jobs(jobs, parallel, deadline)

    def remaining(self) -> float: return self.deadline - time.time()

    def child_env(self, threads: int | None = None) -> dict:
        env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg", CUBLAS_WORKSPACE_CONFIG=":4096:8",
                   JUPYTER_RUNTIME_DIR=str(self.work / "jupyter_runtime"), IPYTHONDIR=str(self.work / "ipython"))
        env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        if threads: env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        return env

    def worker(self, name: str, kind: str, args: dict, timeout: float, threads=None, sub="") -> Job:
        argv = [self.py, "-m", "benchmarks.device_check", "worker", kind, json.dumps(args)]
        return Job(name, argv, timeout, self.work / sub / f"{name}.log", self.child_env(threads))

# ---------------------------------------------------------------- 1. env

def step_env(ctx: Ctx) -> dict:
    rec = step_record("env", "GPU, versions, matmul peaks, offline demo data and notebook runner")
    s = ctx.s
    sizes = sorted({s["img"], 32, 64}) if "notebooks" in ctx.args.steps else sorted({s["img"], 64})
    j = ctx.worker("env", "env", dict(device=ctx.device, n=s["matmul_n"], repeats=s["matmul_repeats"], demo_sizes=sizes,
                                      need_runner="notebooks" in ctx.args.steps), s["timeouts"]["env"])
    ctx.run([j], 1, ctx.deadline)
    problem = job_problem(j)
    rec["checks"].append(check("env worker finished", problem is None, problem or f"{j.seconds:.1f} s"))
    if problem is None:
        r = j.result; pr = r.pop("problems")
        rec["figures"] = r
        rec["checks"].append(check(f"device {ctx.device} usable", "device" not in pr,
                                   pr.get("device", r.get("gpu_name") or r.get("cpu_model"))))
        for dt in ("float32", "bfloat16") if "device" not in pr else ():
            g = (r["peak"].get(dt) or {}).get("gflops")
            ok = isinstance(g, (int, float)) and math.isfinite(g) and g > 0
            rec["checks"].append(check(f"{dt} matmul peak measured (n={s['matmul_n']})", ok,
                                       f"{g:.0f} GFLOP/s" if ok else pr.get(f"peak_{dt}", "missing")))
            if ok: ctx.env_peaks[dt] = g
        rec["checks"].append(check("demo data available offline (small splits, MNI152 cache, nilearn metadata)",
                                   "demo_data" not in pr, pr.get("demo_data", f"built now: {r['demo_cache_files_built'] or 'none'}")))
        if "notebooks" in ctx.args.steps:
            bad = {k: v for k, v in pr.items() if k.startswith("import_")}
            rec["checks"].append(check("notebook runner importable (papermill, nbclient, ipykernel, zmq)", not bad,
                                       "; ".join(f"{k[7:]}: {v}" for k, v in bad.items()) or "all import"))
        rec["tables"].append(dict(title="machine", columns=["figure", "value"], rows=[[k, r.get(k)] for k in (
            "gpu_name", "gpu_memory_gib", "gpu_capability", "nvidia_smi", "torch", "cuda_build", "cudnn", "nccl",
            "python", "cpu_model", "cpu_count") if r.get(k) is not None] + [[f"peak {dt} (GFLOP/s)", v["gflops"]]
                                                                         for dt, v in r["peak"].items()]))
    return finish(rec, j.seconds)

# ---------------------------------------------------------------- 2. notebooks

def notebook_names(selected) -> list[str]:
    names = sorted(p.stem for p in NBS.glob("repro_*.ipynb"))
    if selected is None: return names
    bad = [n for n in selected if n not in names]
    if bad: raise SystemExit(f"--notebooks: unknown {bad}; choose from {','.join(names)}")
    return list(selected)

def plan_notebooks(ctx: Ctx) -> list[Job]:
    jobs = []
    for nb in notebook_names(ctx.args.notebooks or ctx.s["notebooks"]):
        d = ctx.work / "notebooks" / nb
        argv = [ctx.py, "-m", "papermill", NBS / f"{nb}.ipynb", d / f"{nb}.out.ipynb", "-p", "smoke", "True",
                "-p", "device", ctx.device, "-p", "out_dir", d / "out", "--cwd", NBS, "-k", "python3",
                "--log-output", "--no-progress-bar"]
        jobs.append(Job(f"nb_{nb}", argv, ctx.s["timeouts"]["job"], d / f"{nb}.log", ctx.child_env(ctx.s["threads"])))
    return jobs

def _find_provenance(obj):
    if isinstance(obj, dict):
        if "torch_version" in obj and "device" in obj: return obj
        for v in obj.values():
            p = _find_provenance(v)
            if p: return p
    return None

def judge_notebooks(ctx: Ctx, jobs: list[Job]) -> dict:
    rec = step_record("notebooks", "every nbs/repro_*.ipynb under papermill, smoke=True, on the device")
    rows = []
    for j in jobs:
        nb = j.name[3:]
        prob = job_problem(j) if j.returncode != 0 or not j.started or j.timed_out else None
        mpath = ctx.work / "notebooks" / nb / "out" / "metrics.json"
        fig = dict(seconds=j.seconds, exit=j.returncode)
        if prob is None and not mpath.exists(): prob = f"no {mpath.name} written; log tail: {j.tail(800)}"
        if prob is None:
            m = json.loads(mpath.read_text())
            pv = _find_provenance(m) or {}
            dev = str(pv.get("device", ""))
            fig.update(device=dev, device_name=pv.get("device_name"),
                       **{k.replace(".", "_"): v for k, v in _flat(m) if k.endswith("auroc") and isinstance(v, (int, float))
                          and k.count(".") <= 2 and "ci" not in k})
            want = "cuda" if ctx.cuda else "cpu"
            if not dev.startswith(want): prob = f"metrics.json provenance says device {dev!r}, expected {want}"
        rec["checks"].append(check(f"{nb} ran and wrote metrics.json on {ctx.device}", prob is None,
                                   prob or f"{j.seconds:.0f} s"))
        rec["figures"][nb] = fig
        auc = [v for k, v in fig.items() if k.endswith("auroc")]
        rows.append([nb, "ok" if prob is None else "FAILED", j.seconds, fig.get("device"), auc[0] if auc else None])
    rec["tables"].append(dict(title="repro notebooks (smoke): numbers mean nothing at this size", columns=[
        "notebook", "result", "seconds", "device (provenance)", "first AUROC in metrics.json"], rows=rows))
    return finish(rec, max([j.seconds or 0 for j in jobs], default=0))

# ---------------------------------------------------------------- 3. train

def plan_train(ctx: Ctx) -> list[Job]:
    s, t = ctx.s, ctx.s["timeouts"]["job"]
    base = dict(device=ctx.device, batch=s["batch"], img=s["img"], subset=s["subset"])
    jobs = [ctx.worker("compile", "compile", dict(base, method=s["compile"]["method"], backend=s["compile"]["backend"],
                                                   steps=s["compile"]["steps"]), t, s["threads"], "train")]
    for amp in s["resume_amp"]:
        tag = "amp" if amp else "fp32"
        jobs.append(ctx.worker(f"resume_{tag}", "resume", dict(base, method="mddpm", amp=amp, work=str(ctx.work / "train" / f"resume_{tag}"),
                                                              **s["resume"]), t, s["threads"], "train"))
    for m in ctx.args.methods:
        jobs.append(ctx.worker(f"train_{m}", "train_method", dict(base, method=m, steps=s["train_steps"]), t, s["threads"], "train"))
    return jobs

def _rel(a: float, b: float) -> float: return abs(a - b) / max(abs(b), 1e-12)

def _max_rel(xs, ys) -> float: return max((_rel(a, b) for a, b in zip(xs, ys)), default=float("inf"))

def judge_train(ctx: Ctx, jobs: list[Job]) -> dict:
    rec = step_record("train", "train per method, AMP off/on; SIGKILL and exact resume; torch.compile")
    s, tol, rows = ctx.s, ctx.s["tol"], []
    want_amp = "bfloat16" if ctx.cuda else "float32"  # `train` ignores amp on the CPU
    for j in jobs:
        prob = job_problem(j)
        if prob is not None:
            rec["checks"].append(check(f"{j.name} finished", False, prob)); continue
        r = j.result
        if j.name.startswith("train_"):
            m = r["method"]
            for run in r["runs"]:
                tag = "amp" if run["amp"] else "fp32"
                for st in run["stages"]:
                    ok = st["steps"] == s["train_steps"] and st["losses"] and all(math.isfinite(v) for v in st["losses"])
                    rec["checks"].append(check(f"{m} {st['stage']} ({tag}): {s['train_steps']} steps, finite losses", ok,
                                               f"{len(st['losses'])} losses, last {st['losses'][-1] if st['losses'] else None}"))
                    rows.append([m, st["stage"], tag, st["steps"], st["seconds"], st["images_per_s"],
                                 st["losses"][0] if st["losses"] else None, st["losses"][-1] if st["losses"] else None,
                                 st["cuda_max_allocated_mib"], ",".join(run["dtypes_seen"])])
                    rec["figures"][f"{m}.{st['stage']}.{tag}"] = {k: st[k] for k in ("steps", "seconds", "images_per_s", "cuda_max_allocated_mib")} | dict(
                        first_loss=st["losses"][0] if st["losses"] else None, last_loss=st["losses"][-1] if st["losses"] else None)
                want = want_amp if run["amp"] else "float32"
                rec["checks"].append(check(f"{m} ({tag}): layers computed in {want}", want in run["dtypes_seen"] and
                                           (run["amp"] or run["dtypes_seen"] == ["float32"]), f"seen {run['dtypes_seen']}"))
                rec["checks"].append(check(f"{m} ({tag}): weights changed", run["param_change"] > 0, f"sum of abs weight changes {run['param_change']:.3g}"))
            f32, amp = (run["stages"][0]["losses"][0] for run in r["runs"])
            d = _rel(amp, f32)
            rec["figures"][f"{m}.first_loss_amp_vs_fp32_rel"] = d
            rec["checks"].append(check(f"{m}: first loss with AMP within {tol['amp_vs_fp32']:.0%} of fp32", d <= tol["amp_vs_fp32"],
                                       f"{amp:.5g} vs {f32:.5g} (rel {d:.2g})"))
        elif j.name.startswith("resume_"):
            tag = j.name[7:]
            a, c = r["uninterrupted"], r["resumed"]
            rec["checks"].append(check(f"resume ({tag}): the run was killed by SIGKILL", r["rc_killed"] == -signal.SIGKILL,
                                       f"exit {r['rc_killed']}"))
            rec["checks"].append(check(f"resume ({tag}): last checkpoint before the kill is step {r['expected_checkpoint_step']}",
                                       r["checkpoint_step_after_kill"] == r["expected_checkpoint_step"], r["checkpoint_step_after_kill"]))
            if not (a and c):
                rec["checks"].append(check(f"resume ({tag}): both runs delivered losses", False,
                                           f"exit {r['rc_uninterrupted']} / {r['rc_resumed']}")); continue
            la, lc = a["stages"][0]["losses"], c["stages"][0]["losses"]
            t = tol["amp"] if (r["amp"] and ctx.cuda) else tol["fp32"]  # `train` ignores amp on the CPU
            d = _max_rel(lc, la) if len(la) == len(lc) else float("inf")
            rec["figures"][f"resume_{tag}"] = dict(max_rel_diff=d, exact=la == lc, resumed_from=c["stages"][0]["resumed_from"],
                                                    steps=len(lc))
            rec["checks"].append(check(f"resume ({tag}): resumed from step {r['expected_checkpoint_step']}",
                                       c["stages"][0]["resumed_from"] == r["expected_checkpoint_step"], c["stages"][0]["resumed_from"]))
            rec["checks"].append(check(f"resume ({tag}): loss sequence equals the uninterrupted run (rel tol {t:g})", d <= t,
                                       f"{len(lc)} vs {len(la)} losses, max rel diff {d:.3g}, bitwise equal: {la == lc}"))
        elif j.name == "compile":
            e, c = r["eager"], r["compiled"]
            le, lc = e["stages"][0]["losses"], c["stages"][0]["losses"]
            te, tc = e["stages"][0]["times"], c["stages"][0]["times"]
            steady = lambda ts: (ts[-1] - ts[0]) / (len(ts) - 1) if len(ts) > 1 else None
            fig = dict(method=r["method"], backend=r["backend"], first_step_s_compiled=tc[0] if tc else None,
                       first_step_s_eager=te[0] if te else None, step_s_compiled=steady(tc), step_s_eager=steady(te),
                       graphs=c.get("dynamo_unique_graphs"), graph_breaks=c.get("dynamo_graph_breaks"))
            if fig["step_s_compiled"] and fig["step_s_eager"]: fig["speedup"] = fig["step_s_eager"] / fig["step_s_compiled"]
            rec["figures"]["compile"] = fig
            ok = len(lc) == s["compile"]["steps"] and all(math.isfinite(v) for v in lc)
            rec["checks"].append(check(f"torch.compile ({r['backend']}) on {r['method']}: {len(lc)} steps, finite losses", ok, lc[-1:] ))
            rec["checks"].append(check("torch.compile produced at least one graph", (c.get("dynamo_unique_graphs") or 0) >= 1,
                                       f"{c.get('dynamo_unique_graphs')} graphs, {c.get('dynamo_graph_breaks')} graph breaks"))
            d = _rel(lc[0], le[0]) if lc and le else float("inf")
            rec["checks"].append(check(f"compiled first loss within {tol['compile']:g} of eager", d <= tol["compile"],
                                       f"{lc[0] if lc else None} vs {le[0] if le else None} (rel {d:.2g})"))
    for m in ctx.args.methods:
        if not any(j.name == f"train_{m}" for j in jobs): rec["checks"].append(check(f"train_{m} planned", False, "missing"))
    rec["tables"].append(dict(title="short training runs (run side by side with other jobs: speeds are indicative only)",
                              columns=["method", "stage", "precision", "steps", "seconds", "img/s", "first loss", "last loss",
                                       "CUDA max alloc (MiB)", "layer dtypes"], rows=rows))
    return finish(rec, max([j.seconds or 0 for j in jobs], default=0))

# ---------------------------------------------------------------- 5. ddp

def plan_ddp(ctx: Ctx) -> list[Job]:
    s = ctx.s
    args = dict(device=ctx.device, methods=ctx.args.ddp_methods, steps=s["ddp_steps"], batch=s["batch"], img=s["img"],
                subset=s["subset"], work=str(ctx.work / "ddp"))
    argv = [ctx.py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ctx.args.nproc),
            REPO / "benchmarks" / "device_check.py", "worker", "ddp", json.dumps(args)]
    return [Job("ddp", argv, s["timeouts"]["job"], ctx.work / "ddp" / "ddp.log", ctx.child_env(s["threads"]))]

def judge_ddp(ctx: Ctx, jobs: list[Job]) -> dict:
    rec = step_record("ddp", f"train under torchrun --nproc_per_node {ctx.args.nproc} ({'NCCL' if ctx.cuda else 'gloo'})")
    j = jobs[0]
    prob = job_problem(j)
    rec["checks"].append(check("torchrun finished", prob is None, prob or f"{j.seconds:.1f} s"))
    if prob is None:
        r, want = j.result, "nccl" if ctx.cuda else "gloo"
        t = ctx.s["tol"]["amp"] if ctx.cuda else ctx.s["tol"]["fp32"]
        rec["checks"].append(check("launched by torchrun", r["torchrun"], f"world size {r['world_size']}"))
        rows = []
        for m in ctx.args.ddp_methods:
            x = r["methods"].get(m)
            if x is None or "error" in x:
                rec["checks"].append(check(f"{m} under torchrun", False, x["error"] if x else "no result")); continue
            p, d = x["plain"], x["ddp"]
            lp, ld = p["stages"][0]["losses"], d["stages"][0]["losses"]
            diff = _max_rel(ld, lp) if len(lp) == len(ld) else float("inf")
            ok_steps = len(ld) == ctx.s["ddp_steps"] and all(math.isfinite(v) for v in ld)
            rec["checks"].append(check(f"{m}: DistributedDataParallel on the {want} backend",
                                       d["ddp_wrappings"] >= 1 and d["backend"] == want, f"{d['ddp_wrappings']} wrapping(s), backend {d['backend']}"))
            rec["checks"].append(check(f"{m}: {ctx.s['ddp_steps']} DDP steps, finite losses, rank-0 checkpoint", ok_steps and d["checkpoint_done"],
                                       f"{len(ld)} losses, checkpoint done: {d['checkpoint_done']}"))
            rec["checks"].append(check(f"{m}: DDP losses equal the plain call's (rel tol {t:g})", diff <= t, f"max rel diff {diff:.3g}"))
            rec["figures"][m] = dict(plain_ddp_wrappings=p["ddp_wrappings"], ddp_max_rel_diff=diff, ddp_seconds=d["stages"][0]["seconds"],
                                     plain_seconds=p["stages"][0]["seconds"])
            rows.append([m, p["ddp_wrappings"], d["ddp_wrappings"], d["backend"], len(ld), diff])
        left = {m: DDP_LEFT_OUT[m] for m in ctx.args.methods if m in DDP_LEFT_OUT and m not in ctx.args.ddp_methods}
        if left: rec["figures"]["left_out"] = left
        rec["tables"].append(dict(title="plain call (process group kept off) and the same call as the package makes it under torchrun",
                                  columns=["method", "plain: DDP wrappings", "started: DDP wrappings", "backend", "steps", "max rel loss diff"],
                                  rows=rows))
    return finish(rec, j.seconds)

# ---------------------------------------------------------------- 4. bench

def bench_jobs(ctx: Ctx) -> list[Job]:
    s, out = ctx.s, ctx.work / "bench"
    common = [ctx.py, "-m", "benchmarks.run", "--device", ctx.device, "--out", out, "--no-plot"] + (["--quick"] if ctx.quick else []) \
        + (["--in-process"] if s["bench_in_process"] else [])  # quick: one process per invocation, not per case
    t = s["timeouts"]
    env = ctx.child_env()  # timed: no thread count forced (benchmarks/README.md)
    # no peak section: the env step measured the same matmul peak (benchmarks.case.run_matmul, same n) minutes before
    sw = Job("bench_switches", common + ["--sections", "switches", "--methods", ",".join(s["bench_switch_methods"]),
                                         "--switch-timeout", "200", "--tag", "devcheck-switches"], t["bench_switches"], out / "switches.log", env)
    me = Job("bench_methods", common + ["--sections", "methods", "--methods", ",".join(s["bench_methods"]),
                                        "--case-timeout", "150", "--tag", "devcheck-methods"], t["bench_methods"], out / "methods.log", env)
    return [sw, me]

def _bench_json(ctx: Ctx, j: Job):
    "(result dict, file name, complete?) of one benchmarks.run invocation: the final JSON, else its partial JSON."
    wrote = [l.split(" ", 1)[1].strip() for l in j.tail(10 ** 6).splitlines() if l.startswith("wrote ") and l.strip().endswith(".json")]
    if wrote and Path(wrote[-1]).exists(): return json.loads(Path(wrote[-1]).read_text()), Path(wrote[-1]).name, True
    tag = j.name.replace("bench_", "devcheck-")
    part = sorted((ctx.work / "bench").glob(f"*{tag}*.partial.json"))
    if part: return json.loads(part[-1].read_text()), part[-1].name, False
    return None, None, False

def judge_bench(ctx: Ctx, jobs: list[Job]) -> dict:
    from benchmarks.report import summarise
    rec = step_record("bench", "benchmarks.run: paper presets at their batch sizes; the ViT-B/16 bf16 target")
    rows, cases, target = [], [], None
    for j in jobs:
        data, name, complete = _bench_json(ctx, j)
        prob = job_problem(j) if (j.returncode != 0 or j.timed_out or not j.started) else None
        rec["checks"].append(check(f"{j.name} finished and wrote its JSON", prob is None and complete,
                                   prob or (name if complete else "no result JSON")))
        if data is None: continue
        if not complete and data.get("settings"): data["summary"] = summarise(data)  # the partial run's derived numbers
        summ = data.get("summary") or {}
        p32 = summ.get("peak_gflops_fp32") or ctx.env_peaks.get("float32")
        p16 = summ.get("peak_gflops_bf16") or ctx.env_peaks.get("bfloat16")
        rec["figures"][j.name] = dict(file=name, complete=complete, peak_gflops_fp32=p32, peak_gflops_bf16=p16,
                                      peak_source="this run" if summ.get("peak_gflops_fp32") else "env step")
        for sec in ("methods", "switches"):
            for r in data.get(sec, []):
                sp = r["spec"]
                ok = r.get("status") == "ok"
                pk = p16 if sp.get("bf16") else p32
                frac = r["achieved_gflops"] / pk if ok and pk else None
                mem = r.get("cuda_max_allocated_mib", r.get("peak_rss_mib")) if ok else None
                label = f"{sp['method']} {sp['preset']} {sp['mode']}{' ' + sp['stage'] if sp.get('stage') else ''}" \
                        f"{' [' + sp['switch'] + ']' if sp.get('switch') else ''}"
                cases.append(dict(label=label, ok=ok, error=r.get("error")))
                rows.append([sec, label, sp["batch"], r.get("status"), r.get("images_per_s"), mem, r.get("achieved_gflops"),
                             frac, r.get("compile_first_step_s"), (r.get("error") or "")[:160]])
                if ok: rec["figures"][f"{sec}: {label} b{sp['batch']}"] = dict(
                    images_per_s=r["images_per_s"], memory_mib=mem, gflops=r["achieved_gflops"], fraction_of_peak=frac)
        for t in summ.get("targets", []):
            if t["target"].startswith("MAE ViT-B/16 224 training in bf16"): target = dict(t)
        hit = [r for r in data.get("switches", []) if r.get("status") == "ok" and r["spec"]["method"] == "mae_uad"
               and r["spec"]["preset"] == "paper" and r["spec"].get("bf16")]
        if hit and target and target["status"] == "not measured" and p16:  # the report had no peak of its own
            f = hit[0]["achieved_gflops"] / p16
            target.update(status="met" if f >= 0.4 else "not met", evidence=f"{100 * f:.1f} % of {p16:.0f} GFLOP/s "
                          f"(the env step's bf16 matmul peak; batch {hit[0]['spec']['batch']})")
    bad = [c for c in cases if not c["ok"]]
    rec["checks"].append(check("every benchmark case ran", cases and not bad,
                               f"{len(cases) - len(bad)}/{len(cases)} ok" + ("; failed: " + "; ".join(f"{c['label']}: {c['error']}" for c in bad[:6]) if bad else "")))
    if ctx.cuda:
        no_mem = [c["label"] for c, r in zip(cases, rows) if c["ok"] and r[5] is None]
        rec["checks"].append(check("torch.cuda.max_memory_allocated recorded for every case", cases and not no_mem, ", ".join(no_mem[:5]) or "all"))
    rec["checks"].append(check("the ViT-B/16 bf16 target was judged (met or not)", target is not None,
                               f"{target['status']}: {target['evidence']}" if target else "no target row"))
    if target: rec["figures"]["target_vit_b16_bf16_40pct"] = dict(status=target["status"], evidence=target["evidence"])
    rec["tables"].append(dict(title="benchmark cases (memory: CUDA max allocated on GPU, process peak RSS on CPU; "
                                    "fraction against the run's own matmul peak, else the env step's)",
                              columns=["section", "case", "batch", "status", "img/s", "memory (MiB)", "GFLOP/s", "of peak",
                                       "compile s", "error"], rows=rows))
    if target: rec["tables"].append(dict(title="target", columns=["target", "status", "evidence"],
                                         rows=[[target["target"], target["status"], target["evidence"]]]))
    return finish(rec, sum(j.seconds or 0 for j in jobs))

# ================================================================ archive and main

def make_archive(work: Path, dest: Path, limit: int = ARCHIVE_LIMIT, per_file: int = 6 * 2 ** 20) -> dict:
    "tar.gz of the work folder without checkpoints and caches; the biggest files are left out until it fits `limit`."
    files = [p for p in sorted(work.rglob("*")) if p.is_file() and not p.name.endswith(SKIP_SUFFIXES)]
    dropped = [p for p in files if p.stat().st_size > per_file]
    keep = sorted((p for p in files if p not in dropped), key=lambda p: p.stat().st_size)
    tmp = dest.with_name(f".{dest.name}.tmp")
    while True:
        with tarfile.open(tmp, "w:gz") as tar:
            for p in keep: tar.add(p, arcname=str(Path("device_check") / p.relative_to(work)))
        if tmp.stat().st_size <= limit or not keep: break
        n = max(1, len(keep) // 10); dropped += keep[-n:]; keep = keep[:-n]  # drop the biggest tenth and retry
    os.replace(tmp, dest)
    return dict(file=dest.name, bytes=dest.stat().st_size, files=len(keep),
                left_out=[str(p.relative_to(work)) for p in dropped][:50])

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.device_check", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the checks", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    r.add_argument("--device", default="cuda", help="'cuda', 'cuda:N' or 'cpu'")
    r.add_argument("--quick", action="store_true", help="tiny sizes (the CPU rehearsal of the test suite)")
    r.add_argument("--out", required=True, help="summary.json, summary.md and the log archive go here ($OUT on the device)")
    r.add_argument("--work", default=None, help="working folder (default: a new folder under /tmp)")
    r.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    r.add_argument("--notebooks", default=None, help="comma-separated repro notebooks (default: all; quick: repro_baseline_ae)")
    r.add_argument("--methods", default=",".join(METHODS), help="methods of the train and ddp steps")
    r.add_argument("--budget-s", type=float, default=None, help="whole-run time budget (default: 480 on CUDA, 600 quick)")
    r.add_argument("--jobs", type=int, default=None, help="jobs side by side in the notebooks/train/ddp phase")
    r.add_argument("--nproc", type=int, default=1, help="torchrun --nproc_per_node of the ddp step")
    r.add_argument("--ddp-methods", default=None, help="methods of the ddp step (default: --methods without those in DDP_LEFT_OUT)")
    b = sub.add_parser("bundle", help="prepare the wheels and demo cache a device call carries")
    b.add_argument("--dest", default=str(REPO / ".device_bundle"))
    b.add_argument("--python-version", default="3.12")
    b.add_argument("--limit-mib", type=float, default=64.0, help="what may travel: the working tree plus the bundle")
    b.add_argument("--no-cache", action="store_true", help="wheels only")
    w = sub.add_parser("worker", help=argparse.SUPPRESS)
    w.add_argument("kind", choices=sorted(WORKERS)); w.add_argument("args")
    a = p.parse_args(argv)
    if a.cmd == "run":
        a.steps = _subset(a.steps, STEPS, "--steps")
        a.methods = _subset(a.methods, METHODS, "--methods")
        a.ddp_methods = _subset(a.ddp_methods, METHODS, "--ddp-methods") if a.ddp_methods else \
            [m for m in a.methods if m not in DDP_LEFT_OUT]
        if "ddp" in a.steps and not a.ddp_methods: raise SystemExit("--ddp-methods: no method left for the ddp step")
        a.notebooks = [n.strip() for n in a.notebooks.split(",") if n.strip()] if a.notebooks else None
        if not (a.device == "cpu" or re.fullmatch(r"cuda(:\d+)?", a.device)):
            raise SystemExit(f"--device must be cpu, cuda or cuda:N, got {a.device!r}")
        if a.nproc < 1: raise SystemExit(f"--nproc must be >= 1, got {a.nproc}")
    return a

def _subset(value, allowed, flag):
    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in allowed]
    if bad or not items: raise SystemExit(f"{flag}: unknown {bad or value!r}; choose from {','.join(allowed)}")
    return [v for v in allowed if v in items]

def _git_commit():
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        return sha.stdout.strip() or None
    except Exception: return None

def cmd_run(args) -> int:
    args.work = args.work or f"/tmp/uad_device_check/{datetime.datetime.now(datetime.timezone.utc):%Y%m%dT%H%M%SZ}"
    ctx = Ctx(args)
    ctx.work.mkdir(parents=True, exist_ok=True); ctx.out.mkdir(parents=True, exist_ok=True)
    summary = dict(created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   command="python -m benchmarks.device_check run " + " ".join(sys.argv[2:]), device=args.device,
                   quick=args.quick, git_commit=_git_commit(), settings=ctx.s, steps_selected=args.steps, steps=[],
                   work=str(ctx.work), machine={})
    records = {st: step_record(st) for st in args.steps}
    def save(archive=False):
        summary["steps"] = [records[st] for st in args.steps]
        summary["total_s"] = time.time() - ctx.t0
        t = os.times(); summary["cpu_s_children"] = t.children_user + t.children_system
        summary["jobs"] = [dict(name=j.name, started=j.started, exit=j.returncode, seconds=j.seconds, cpu_s=j.cpu_s,
                                stopped_at_limit=j.timed_out, log=str(j.log.relative_to(ctx.work)) if j.log.is_relative_to(ctx.work) else str(j.log))
                           for j in ctx.jobs]
        if archive:
            try: summary["archive"] = make_archive(ctx.work, ctx.out / ARCHIVE)
            except Exception as e: summary["archive"] = dict(error=f"{type(e).__name__}: {e}")
        write_summary(summary, ctx.out)
    def guarded(name, fn, *a):
        try: records[name] = fn(*a)
        except Exception as e:
            import traceback
            rec = step_record(name); rec["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc()[-2500:]}"
            records[name] = finish(rec)
        print(f"[{name}] {records[name]['status']}", flush=True)
    print(f"device check: {args.device}{' quick' if args.quick else ''}, steps {','.join(args.steps)}, "
          f"budget {ctx.s['budget_s']:.0f} s, work {ctx.work}", flush=True)
    save()
    if "env" in args.steps:
        print("[env]", flush=True); guarded("env", step_env, ctx)
        summary["machine"] = records["env"]["figures"]
        save()
        if not any(c["ok"] for c in records["env"]["checks"] if c["name"].startswith("device ")):
            for st in args.steps[1:]: records[st]["error"] = f"not run: the env step found no usable {args.device}"
            save(archive=True); print(markdown(summary).split("\n## ")[0]); return exit_code(summary)
    phase = [(st, plan, judge) for st, plan, judge in (("notebooks", plan_notebooks, judge_notebooks),
                                                       ("train", plan_train, judge_train), ("ddp", plan_ddp, judge_ddp))
             if st in args.steps]
    if phase:
        print(f"[{'+'.join(st for st, _, _ in phase)}] side by side, {ctx.s['jobs']} at a time", flush=True)
        planned = {}
        for st, plan, _ in phase:
            try: planned[st] = plan(ctx)
            except SystemExit: raise
            except Exception as e: planned[st] = []; records[st]["error"] = f"planning failed: {type(e).__name__}: {e}"
        order = [j for st in ("notebooks", "train", "ddp") for j in planned.get(st, []) if j.name in ("nb_repro_compare", "compile")]
        order += [j for st in ("notebooks", "train", "ddp") for j in planned.get(st, []) if j not in order]
        reserve = 0 if "bench" not in args.steps else min(ctx.s["timeouts"]["bench_switches"] + 120, 0.45 * ctx.remaining())
        ctx.run(order, ctx.s["jobs"], min(ctx.deadline - reserve, time.time() + ctx.s["timeouts"]["phase"]))
        for st, _, judge in phase:
            if records[st]["error"]: records[st] = finish(records[st]); continue
            guarded(st, judge, ctx, planned[st])
        save(archive=True)
    if "bench" in args.steps:
        print("[bench] alone", flush=True)
        jobs = bench_jobs(ctx)
        for j in jobs:  # one after the other, each alone on the machine
            j.timeout = max(10.0, min(j.timeout, ctx.remaining() - 15))
            ctx.run([j], 1, ctx.deadline - 10)
        guarded("bench", judge_bench, ctx, jobs)
    save(archive=True)
    print(markdown(summary).split("\n## ")[0], flush=True)
    print(f"wrote {ctx.out / 'summary.json'}, {ctx.out / 'summary.md'}, {ctx.out / ARCHIVE}", flush=True)
    return exit_code(summary)

# ================================================================ bundle: what a device call carries

# Python packages of the device machines' image ('cuda'), as listed in /work/.library/device/KINDS.md on 2026-11-17.
DEVICE_HAS = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas patsy peft pillow pip
pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp"""
RUNNER = ("papermill", "ipykernel")  # the notebook runner; their dependencies missing there are resolved by pip
# imported only when present and never needed by papermill: ipykernel's debugger, IPython's completion (jedi, parso);
# a kernel without them was rehearsed in a clean environment holding only the device's packages
OPTIONAL = {"debugpy", "jedi", "parso"}
METADATA_ONLY = ("nilearn",)  # the demo cache key holds nilearn's version; its MNI152 maps travel in the cache instead
PLATFORMS = ["manylinux_2_%d_x86_64" % n for n in (35, 34, 31, 28, 27, 26, 24, 17, 12, 5)] + \
            ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]

def norm(name: str) -> str: return re.sub(r"[-_.]+", "-", name).lower()

def select_missing(install: list[dict], present: set[str], skip=frozenset()) -> list[tuple[str, str]]:
    "(name, version) of the resolved packages (pip's --report 'install' rows) that the device lacks."
    out, seen = [], {}
    for row in install:
        n, v = norm(row["metadata"]["name"]), row["metadata"]["version"]
        if n in present or n in skip: continue
        if n in seen and seen[n] != v: raise ValueError(f"two versions of {n}: {seen[n]} and {v}")
        if n not in seen: seen[n] = v; out.append((n, v))
    return out

def _pip(*a, **kw):
    return subprocess.run([sys.executable, "-m", "pip", *a], capture_output=True, text=True, **kw)

def _tree_bytes() -> int:
    "Bytes of what a device call sends besides carried paths: tracked files and untracked files git does not ignore."
    p = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, timeout=60)
    return sum((REPO / f).stat().st_size for f in p.stdout.decode().split("\0") if f and (REPO / f).is_file())

def _du(path: Path) -> int: return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

def cmd_bundle(args) -> int:
    import importlib.metadata as md
    dest = Path(args.dest).resolve(); whl = dest / "whl"
    whl.mkdir(parents=True, exist_ok=True)
    target = ["--only-binary=:all:", "--python-version", args.python_version, "--implementation", "cp",
              "--abi", "cp" + args.python_version.replace(".", "")] + [x for p in PLATFORMS for x in ("--platform", p)]
    pins = [f"{n}=={md.version(n)}" for n in RUNNER]  # the versions this checkout's venv runs the notebooks with
    print(f"resolving {' '.join(pins)} for CPython {args.python_version} manylinux x86_64 ...", flush=True)
    report = dest / "pip-report.json"
    r = _pip("install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report), "--target", str(dest / ".resolve"),
             *target, *pins, timeout=900)
    if r.returncode: print(r.stdout + r.stderr, file=sys.stderr); return 1
    install = json.loads(report.read_text())["install"]
    present = {norm(n) for n in DEVICE_HAS.split()}
    need = select_missing(install, present, {norm(n) for n in OPTIONAL})
    need += [(n, md.version(n)) for n in METADATA_ONLY]
    names = {f"{n}=={v}" for n, v in need}
    for old in whl.glob("*.whl"):  # stale wheels of other versions would stop the install there
        n, v = old.name.split("-")[:2]
        if f"{norm(n)}=={v}" not in names: old.unlink()
    have = {f"{norm(p.name.split('-')[0])}=={p.name.split('-')[1]}" for p in whl.glob("*.whl")}
    todo = sorted(names - have)
    if todo:
        r = _pip("download", "--no-deps", "--quiet", "-d", str(whl), *target, *todo, timeout=1800)
        if r.returncode: print(r.stdout + r.stderr, file=sys.stderr); return 1
    wheels = sorted(p.name for p in whl.glob("*.whl"))
    print(f"{len(wheels)} wheels: {', '.join(wheels)}", flush=True)
    built = []
    if not args.no_cache:
        cache = dest / "cache"
        shutil.rmtree(cache, ignore_errors=True)  # no stale splits of an earlier demo version
        os.environ["UAD_NOTEBOOKS_CACHE"] = str(cache)
        from uad_notebooks.demo import demo_arrays, mni152_anatomy
        mni152_anatomy()  # so that no split is ever built from nilearn's files there (demo_healthy rebuilds from it)
        for img in (32, 64):  # the small splits of the smoke notebooks (mddpm and memmc at 32 px) and of train/ddp
            for split in ("train", "val", "test"): demo_arrays(split, img_size=img, size="small", progress=False)
        built = sorted(p.name for p in (cache / "demo").iterdir())
    shutil.rmtree(dest / ".resolve", ignore_errors=True)
    sizes = dict(wheels=_du(whl), cache=_du(dest / "cache") if (dest / "cache").exists() else 0, tree=_tree_bytes())
    sizes["total"] = sum(sizes.values())
    info = dict(created_at=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                python_version=args.python_version, wheels=wheels, cache_files=built, bytes=sizes)
    (dest / "MANIFEST.json").write_text(json.dumps(info, indent=1))
    mib = {k: v / 2 ** 20 for k, v in sizes.items()}
    print("sizes (MiB): " + ", ".join(f"{k} {v:.1f}" for k, v in mib.items()) + f"; limit {args.limit_mib:.0f}", flush=True)
    if mib["total"] > args.limit_mib:
        print(f"too big: {mib['total']:.1f} MiB would travel (limit {args.limit_mib:.0f} MiB)", file=sys.stderr); return 1
    return 0

def main(argv=None) -> int:
    args = parse_args(argv)
    if args.cmd == "worker": worker_main(args.kind, args.args); return 0
    if args.cmd == "bundle": return cmd_bundle(args)
    return cmd_run(args)

if __name__ == "__main__":
    if str(REPO) not in sys.path: sys.path.insert(0, str(REPO))
    sys.exit(main())

"""One benchmark case, run in a fresh process so that peak memory of one case never mixes with another's.

`python -m benchmarks.case '<json spec>'` prints one line `BENCH_RESULT {...}`. `benchmarks.run` builds the specs.
Kinds: `matmul` (machine peak), `method` (train or inference throughput of a method preset), `vit` / `unet`
(ours against timm / diffusers, interleaved in one process), `pixel` (pixel AUROC: ours, scikit-learn, torchmetrics).
"""
from __future__ import annotations

import json
import statistics
import sys
import time
import warnings

import numpy as np
import torch

from uad_notebooks.evaluate import _accepts  # the rule evaluate.predict uses to pass `brain=`

MARK = "BENCH_RESULT "

# ---------------------------------------------------------------- memory and timing

def _status_kib(key: str) -> int | None:
    "A field of /proc/self/status in KiB (Linux), or None."
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"): return int(line.split()[1])
    except OSError: return None
    return None

def rss_mib() -> float | None:
    "Current resident set size (MiB)."
    v = _status_kib("VmRSS")
    return None if v is None else v / 1024

def peak_rss_mib() -> float:
    "Peak resident set size of this process (MiB): VmHWM, else ru_maxrss."
    v = _status_kib("VmHWM")
    if v is None:
        import resource
        v = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return v / 1024

def reset_peak_rss() -> bool:
    "Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs); False where unsupported."
    try:
        with open("/proc/self/clear_refs", "w") as f: f.write("5")
        return True
    except OSError: return False

def sync(dev: torch.device):
    if dev.type == "cuda": torch.cuda.synchronize(dev)

def _median(v): return float(statistics.median(v)) if v else None

def count_flops(fn) -> int:
    "FLOPs of `fn()` (forward and, when fn calls backward, backward) counted by torch.utils.flop_counter."
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as fc: fn()
    return int(fc.get_total_flops())

def _mem_start(dev):
    if dev.type == "cuda": torch.cuda.reset_peak_memory_stats(dev)
    return dict(rss_setup_mib=rss_mib())

def _mem_end(dev, start):
    out = dict(start, peak_rss_mib=peak_rss_mib())
    if dev.type == "cuda":
        out.update(cuda_max_allocated_mib=torch.cuda.max_memory_allocated(dev) / 2 ** 20,
                   cuda_max_reserved_mib=torch.cuda.max_memory_reserved(dev) / 2 ** 20)
    return out

# ---------------------------------------------------------------- machine peak

def run_matmul(spec: dict) -> dict:
    "Best-of-`repeats` GFLOP/s of an n x n @ n x n product in `dtype`: the machine's measured matmul peak."
    dev = torch.device(spec["device"])
    dtype = getattr(torch, spec["dtype"])
    n, repeats = int(spec["n"]), int(spec.get("repeats", 5))
    g = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=g).to(dev, dtype) for _ in range(2))
    a @ b; sync(dev)  # warm-up
    times = []
    for _ in range(repeats):
        sync(dev); t = time.perf_counter(); a @ b; sync(dev); times.append(time.perf_counter() - t)
    flops = 2 * n ** 3
    return dict(n=n, dtype=spec["dtype"], flops=flops, times_s=times, best_s=min(times),
                gflops=flops / min(times) / 1e9, median_gflops=flops / _median(times) / 1e9)

# ---------------------------------------------------------------- method presets

def _presets():
    "method -> preset -> (factory(img_size), default img_size, training batch, where the numbers come from)."
    from uad_notebooks.baseline_ae import ConvAE
    from uad_notebooks.mae_uad import mae_uad_demo, mae_uad_brats
    from uad_notebooks.memmc_mae import memmc_mae_demo, memmc_mae_paper
    from uad_notebooks.perceptual_ae import dpa_demo, dpa_nih_pa
    from uad_notebooks.masked_ddpm import mddpm_small, mddpm_paper
    def fixed(f, size):
        def make(s):
            if s not in (None, size): raise ValueError(f"this preset is fixed at img_size={size}, got {s}")
            return f()
        return make
    return {
        "baseline_ae": {"demo": (lambda s: ConvAE(img_size=s or 64), 64, 32, "ConvAE(64), repro_baseline_ae batch_size 32")},
        "mae_uad": {"demo": (lambda s: mae_uad_demo(img_size=s or 64), 64, 32, "mae_uad_demo, repro_mae_uad demo batch 32"),
                    "paper": (fixed(mae_uad_brats, 224), 224, 128, "mae_uad_brats (ViT-B/16 224, k=4, mask 0.85), batch 128")},
        "memmc_mae": {"demo": (lambda s: memmc_mae_demo(img_size=s or 64), 64, 32, "memmc_mae_demo, repro demo batch 32"),
                      "paper": (lambda s: memmc_mae_paper(img_size=s or 224), 224, 64,
                                "memmc_mae_paper (ViT-B/16 224, 40 slots, 8 eval masks), repro real-data batch 64")},
        "perceptual_ae": {"demo": (fixed(lambda: dpa_demo(vgg_weights="random"), 64), 64, 32,
                                   "dpa_demo (NIH layers: relu3_2 at 64 px), final 64 px stage, batch 32; random VGG (same cost)"),
                          "paper": (fixed(lambda: dpa_nih_pa(vgg_weights="random"), 64), 64, 128,
                                    "dpa_nih_pa (relu3_2), final 64 px stage, batch 128; random VGG (same cost)")},
        "mddpm": {"demo": (lambda s: mddpm_small(img_size=s or 64), 64, 32, "mddpm_small (variant mddpm, 4 boxes), batch 32"),
                  "paper": (fixed(mddpm_paper, 96), 96, 32, "mddpm_paper (96 px, 37.5M UNet, mddpm_mfm, 4 boxes), batch 32")},
    }

METHOD_NAMES = {"baseline_ae": "ConvAE (baseline)", "mae_uad": "MAE-UAD", "memmc_mae": "MemMC-MAE",
                "perceptual_ae": "PerceptualAE", "mddpm": "MaskedDDPM"}
INFER_BATCH = 32  # evaluate.predict's default batch size
CONV_METHODS = ("baseline_ae", "perceptual_ae", "mddpm")  # channels_last applies to these

def build_method(method: str, preset: str, img_size: int | None = None, stage: str | None = None):
    "(model, info) for a method preset; `stage` picks MAE-UAD's 'mae' or 'classifier' stage."
    table = _presets()
    if method not in table: raise ValueError(f"method {method!r} is not one of {list(table)}")
    if preset not in table[method]: raise ValueError(f"{method} has no preset {preset!r}; it has {list(table[method])}")
    make, size, batch, source = table[method][preset]
    model = make(img_size)
    if method == "mae_uad": model.set_stage(stage or "mae")
    return model, dict(img_size=model.img_size, in_chans=model.in_chans, paper_batch=batch, source=source,
                       test_time=test_time_work(method, model))

def test_time_work(method: str, model) -> str:
    "What one anomaly_score + anomaly_map call does per image, from the model's own settings."
    if method == "baseline_ae": return "1 AE pass"
    if method == "mae_uad": return f"{model.k} masked MAE passes (mask {model.mask_ratio}) + ViT classifier"
    if method == "memmc_mae": return f"{model.n_eval_masks} masked passes (shared masks)"
    if method == "perceptual_ae": return "1 AE pass + VGG19 features of x and x_hat"
    if method == "mddpm":
        n = len(model.boxes) if model.patched else 1
        return f"{n} UNet passes ({'one per box' if n > 1 else 'whole image'}) + median filter"
    return ""

def make_batch(B: int, C: int, S: int, dev, seed: int = 0) -> dict:
    "A synthetic batch of the item contract: images in [0, 1] inside a disc-shaped 'brain', labels, masks."
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, S), torch.linspace(-1, 1, S), indexing="ij")
    brain = ((xx ** 2 + yy ** 2) < 0.8).float()[None, None].expand(B, 1, S, S).contiguous()
    img = torch.rand(B, C, S, S, generator=g) * brain
    return dict(image=img.to(dev), brain=brain.to(dev), label=(torch.arange(B) % 2).to(dev),
                mask=torch.zeros(B, 1, S, S, device=dev))

def _param_groups(model, wd=0.05):
    if hasattr(model, "param_groups"): return model.param_groups(wd)
    from uad_notebooks.train import default_param_groups
    return default_param_groups(model, wd)

def _autocast(dev, bf16):
    return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bool(bf16))

def _loss_of(out): return out["loss"] if isinstance(out, dict) else out

def run_method(spec: dict) -> dict:
    "Training (loss + backward + AdamW step) or inference (anomaly_score + anomaly_map) throughput of one preset."
    dev = torch.device(spec["device"])
    torch.manual_seed(0)
    model, info = build_method(spec["method"], spec["preset"], spec.get("img_size"), spec.get("stage"))
    B, steps, warmup = int(spec["batch"]), int(spec["steps"]), max(1, int(spec.get("warmup", 1)))
    cl, bf16, comp = spec.get("channels_last", False), spec.get("bf16", False), spec.get("compile", False)
    if cl and spec["method"] not in CONV_METHODS: raise ValueError(f"channels_last applies to {CONV_METHODS} only")
    model.to(dev)
    if cl: model.to(memory_format=torch.channels_last)
    batch = make_batch(B, info["in_chans"], info["img_size"], dev)
    if cl: batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    out = dict(info, n_params=n_params, batch=B, steps=steps, warmup=warmup)
    mem0 = _mem_start(dev)
    times = []
    if spec["mode"] == "train":
        model.train()
        opt = torch.optim.AdamW(_param_groups(model), lr=1e-4)
        loss_fn = torch.compile(model.training_loss) if comp else model.training_loss
        def step():
            with _autocast(dev, bf16): loss = _loss_of(loss_fn(batch))
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
            return loss
        def fwd_bwd():  # eager, for the FLOP count (a compiled graph hides its ops from the counter)
            with _autocast(dev, bf16): loss = _loss_of(model.training_loss(batch))
            loss.backward()
        t = time.perf_counter()
        if comp: step(); sync(dev); out["compile_first_step_s"] = time.perf_counter() - t
        out["flops_per_step"] = count_flops(fwd_bwd)  # forward + backward; the AdamW update is not counted
        opt.zero_grad(set_to_none=True)
        for _ in range(warmup): step()  # the first step also allocates AdamW's state
        for _ in range(steps):
            sync(dev); t = time.perf_counter(); loss = step(); sync(dev); times.append(time.perf_counter() - t)
        out["final_loss"] = float(loss.detach())
    else:
        model.eval()
        kw = {f: ({"brain": batch["brain"]} if _accepts(getattr(model, f), "brain") else {}) for f in ("anomaly_score", "anomaly_map")}
        score_fn = torch.compile(model.anomaly_score) if comp else model.anomaly_score
        def infer(eager=False):
            x = batch["image"].clone()  # a new batch each time: methods cache one batch's work between score and map
            with torch.no_grad(), _autocast(dev, bf16):
                s = (model.anomaly_score if eager else score_fn)(x, **kw["anomaly_score"])
                m = model.anomaly_map(x, **kw["anomaly_map"])
            return s, m
        t = time.perf_counter()
        if comp: infer(); sync(dev); out["compile_first_step_s"] = time.perf_counter() - t
        out["flops_per_step"] = count_flops(lambda: infer(eager=True))
        for _ in range(warmup - 1): infer()
        for _ in range(steps):
            sync(dev); t = time.perf_counter(); s, m = infer(); sync(dev); times.append(time.perf_counter() - t)
        if s.shape != (B,) or m.shape != (B, 1, info["img_size"], info["img_size"]):
            raise RuntimeError(f"unexpected output shapes {tuple(s.shape)} / {tuple(m.shape)}")
        out["finite_outputs"] = bool(torch.isfinite(s).all() and torch.isfinite(m).all())
    out.update(_mem_end(dev, mem0), times_s=times, median_s=_median(times))
    out["images_per_s"] = B / out["median_s"]
    out["achieved_gflops"] = out["flops_per_step"] / out["median_s"] / 1e9
    return out

# ---------------------------------------------------------------- ours vs independent implementations

def _interleaved(pairs: dict, steps: int, warmup: int, dev) -> dict:
    "Median seconds of each callable, alternating them step by step so machine load hits both alike."
    for _ in range(warmup):
        for f in pairs.values(): f()
    times = {k: [] for k in pairs}
    for _ in range(steps):
        for k, f in pairs.items():
            sync(dev); t = time.perf_counter(); f(); sync(dev); times[k].append(time.perf_counter() - t)
    return {k: dict(times_s=v, median_s=_median(v)) for k, v in times.items()}

def _train_fn(model, x, call, dev, bf16):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    def f():
        with _autocast(dev, bf16): loss = call(model, x).float().pow(2).mean()
        opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
    return f

def _infer_fn(model, x, call, dev, bf16):
    def f():
        with torch.no_grad(), _autocast(dev, bf16): call(model, x)
    return f

VIT_CONFIGS = {"demo": dict(img_size=64, patch_size=8, embed_dim=128, depth=4, num_heads=4),
               "vit_b16_224": dict(img_size=224, patch_size=16, embed_dim=768, depth=12, num_heads=12)}

def vit_pair(config: str):
    "Our ViT (MAE-UAD's ViTClassifier: the MAE encoder plus mean-pool head) and timm's at the same configuration."
    from timm.models.vision_transformer import VisionTransformer
    from uad_notebooks.mae_uad import ViTClassifier
    cfg = VIT_CONFIGS[config]
    ours = ViTClassifier(in_chans=1, mlp_ratio=4., drop_path=0., num_classes=2, **cfg)
    theirs = VisionTransformer(in_chans=1, num_classes=2, global_pool="avg", mlp_ratio=4., qkv_bias=True,
                               drop_path_rate=0., **cfg)  # avg pool over patch tokens + fc_norm, as ours
    return ours, theirs, cfg

UNET_CONFIGS = {"small": dict(model_channels=32, num_res_blocks=1, head_channels=32, groups=8, img_size=64),
                "paper": dict(model_channels=128, num_res_blocks=3, head_channels=64, groups=32, img_size=96)}

def unet_pair(config: str):
    "Our UNet (unet_small / unet_mddpm) and diffusers' UNet2DModel built to the same architecture."
    from diffusers import UNet2DModel
    from uad_notebooks.unet import UNet
    c = UNET_CONFIGS[config]
    mc = c["model_channels"]
    ours = UNet(1, model_channels=mc, channel_mult=(1, 2, 2), num_res_blocks=c["num_res_blocks"], attention_resolutions=(),
                head_channels=c["head_channels"], groups=c["groups"])
    theirs = UNet2DModel(sample_size=c["img_size"], in_channels=1, out_channels=1, block_out_channels=(mc, 2 * mc, 2 * mc),
                         layers_per_block=c["num_res_blocks"], down_block_types=("ResnetDownsampleBlock2D",) * 3,
                         up_block_types=("ResnetUpsampleBlock2D",) * 3, attention_head_dim=c["head_channels"],
                         norm_num_groups=c["groups"], attn_norm_num_groups=c["groups"],
                         resnet_time_scale_shift="scale_shift", add_attention=True)
    return ours, theirs, c

def run_pair(spec: dict) -> dict:
    "Ours vs an independent implementation at one configuration: parameter counts, interleaved train / inference times."
    dev = torch.device(spec["device"])
    torch.manual_seed(0)
    B, bf16 = int(spec["batch"]), spec.get("bf16", False)
    if spec["kind"] == "vit":
        ours, theirs, cfg = vit_pair(spec["config"])
        x = torch.rand(B, 1, cfg["img_size"], cfg["img_size"], device=dev)
        call = lambda m, x: m(x)
        names = ("ours", "timm")
    else:
        ours, theirs, cfg = unet_pair(spec["config"])
        x = torch.rand(B, 1, cfg["img_size"], cfg["img_size"], device=dev)
        t = torch.randint(0, 1000, (B,), device=dev)
        call = lambda m, x: m(x, t) if not hasattr(m, "config") else m(x, t).sample
        names = ("ours", "diffusers")
    ours.to(dev); theirs.to(dev)
    n = {k: sum(p.numel() for p in m.parameters()) for k, m in zip(names, (ours, theirs))}
    with torch.no_grad():
        same_shape = tuple(call(ours.eval(), x).shape) == tuple(call(theirs.eval(), x).shape)
    make = _train_fn if spec["mode"] == "train" else _infer_fn
    for m in (ours, theirs): m.train(spec["mode"] == "train")
    fns = {k: make(m, x, call, dev, bf16) for k, m in zip(names, (ours, theirs))}
    flops = {k: count_flops(f) for k, f in fns.items()}
    res = _interleaved(fns, int(spec["steps"]), int(spec.get("warmup", 1)), dev)
    ratio = res["ours"]["median_s"] / res[names[1]]["median_s"]
    return dict(config=cfg, batch=B, mode=spec["mode"], n_params=n, same_output_shape=same_shape, flops=flops,
                timing=res, ratio_ours_over_theirs=ratio, theirs=names[1])

# ---------------------------------------------------------------- pixel metrics

def pixel_problem(n_pixels: int, seed: int = 0, side: int = 100, lesion_frac: float = 0.02):
    "Seeded maps (N,1,side,side) float32 and masks uint8: lesion pixels score higher on average (AUROC about 0.85)."
    if n_pixels % (side * side): raise ValueError(f"n_pixels={n_pixels} must be a multiple of {side * side}")
    rng = np.random.default_rng(seed)
    N = n_pixels // (side * side)
    masks = (rng.random((N, 1, side, side), dtype=np.float32) < lesion_frac).astype(np.uint8)
    maps = rng.standard_normal((N, 1, side, side), dtype=np.float32)
    maps += np.float32(1.5) * masks
    return maps, masks

def pixel_auroc(impl: str, maps, masks, thresholds: int = 200) -> float:
    "Pixel AUROC of the pooled pixels by one implementation."
    if impl == "ours":
        from uad_notebooks.metrics import pixel_metrics
        return float(pixel_metrics(maps, masks)["auroc"])
    if impl == "sklearn":
        from sklearn.metrics import roc_auc_score
        return float(roc_auc_score(masks.ravel(), maps.ravel()))
    from torchmetrics.functional.classification import binary_auroc
    p, y = torch.from_numpy(maps.ravel()), torch.from_numpy(masks.ravel()).long()
    if impl == "torchmetrics_exact": return float(binary_auroc(p, y, thresholds=None))
    if impl == "torchmetrics_binned": return float(binary_auroc(p, y, thresholds=thresholds))
    raise ValueError(f"unknown pixel-metric implementation {impl!r}")

def run_pixel(spec: dict) -> dict:
    "Time and peak-RSS increase of each implementation's pixel AUROC on one seeded problem."
    maps, masks = pixel_problem(int(spec["n_pixels"]), int(spec.get("seed", 0)))
    small = pixel_problem(10_000, 1)
    out = {}
    for impl in spec["impls"]:
        try: pixel_auroc(impl, *small)  # untimed: imports and first-call set-up
        except ImportError as e: out[impl] = dict(skipped=f"not installed: {e}"); continue
        times, can_reset = [], reset_peak_rss()
        before = rss_mib()
        for _ in range(int(spec.get("repeats", 1))):
            t = time.perf_counter(); v = pixel_auroc(impl, maps, masks, int(spec.get("thresholds", 200)))
            times.append(time.perf_counter() - t)
        out[impl] = dict(auroc=v, times_s=times, median_s=_median(times),
                         peak_rss_increase_mib=(peak_rss_mib() - before) if can_reset and before is not None else None)
    return dict(n_pixels=int(spec["n_pixels"]), results=out, peak_rss_mib=peak_rss_mib())

# ---------------------------------------------------------------- entry point

RUNNERS = {"matmul": run_matmul, "method": run_method, "vit": run_pair, "unet": run_pair, "pixel": run_pixel}

def run_spec(spec: dict) -> dict:
    if spec["kind"] not in RUNNERS: raise ValueError(f"unknown case kind {spec['kind']!r}")
    if spec.get("threads"): torch.set_num_threads(int(spec["threads"]))
    return RUNNERS[spec["kind"]](spec)

def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1: sys.exit("usage: python -m benchmarks.case '<json spec>'")
    warnings.filterwarnings("ignore")
    res = run_spec(json.loads(argv[0]))
    res["torch_threads"] = torch.get_num_threads()
    print(MARK + json.dumps(res), flush=True)

if __name__ == "__main__": main()

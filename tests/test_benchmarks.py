"""The benchmark harness (benchmarks/): structure of its results, metric agreement, matched configurations, FLOP counts,
and that it never overwrites results. No timed assertions: speed targets live in the benchmark report."""
import datetime
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import case, report, run  # noqa: E402


def _finite_pos(v): return isinstance(v, (int, float)) and math.isfinite(v) and v > 0


def test_quick_run_in_process(tmp_path):
    "The quick harness on the baseline writes JSON + markdown + figure with positive, finite numbers."
    pytest.importorskip("torchmetrics")
    res, written = run.main(["--quick", "--in-process", "--out", str(tmp_path), "--methods", "baseline_ae",
                             "--sections", "peak,methods,pixel,switches"])
    assert sorted(p.suffix for p in written) == [".json", ".md", ".png"]
    data = json.loads(written[0].read_text())
    for key in ("machine", "settings", "loadavg_before", "loadavg_after", "summary", "command"):
        assert key in data, key
    assert data["machine"]["versions"]["torch"] == torch.__version__ and data["machine"]["cpu_count"] >= 1
    for dt in ("float32", "bfloat16"):
        assert data["peak"][dt]["status"] == "ok" and _finite_pos(data["peak"][dt]["gflops"])
    modes = sorted(r["spec"]["mode"] for r in data["methods"])
    assert modes == ["infer", "train"]
    for r in data["methods"]:
        assert r["status"] == "ok", r
        for k in ("images_per_s", "flops_per_step", "peak_rss_mib", "achieved_gflops", "median_s", "gflop_per_image"):
            assert _finite_pos(r[k]), (k, r[k])
        assert 0 < r["fraction_of_peak"] < 10
    inf = next(r for r in data["methods"] if r["spec"]["mode"] == "infer")
    assert inf["finite_outputs"] is True and inf["test_time"] == "1 AE pass"
    px = data["pixel"][0]["results"]
    assert set(px) >= {"ours", "sklearn"} and all(0.5 < v["auroc"] < 1 for v in px.values())
    assert {t["target"].split(" ")[0] for t in data["summary"]["targets"]} >= {"pixel", "MAE"}
    assert [s["spec"]["switch"] for s in data["switches"]] == ["fp32", "bf16", "channels_last"]
    assert all(s["status"] == "ok" and _finite_pos(s["speedup"]) for s in data["switches"][1:])
    md = written[1].read_text()
    assert "| ConvAE (baseline) | demo |" in md and "## Targets of the issue" in md and "Load average before" in md


def test_case_runs_in_a_fresh_process():
    "`python -m benchmarks.case` measures one case in its own process and prints one result line."
    spec = dict(kind="method", method="baseline_ae", preset="demo", mode="train", batch=2, steps=1, img_size=16, device="cpu")
    p = subprocess.run([sys.executable, "-m", "benchmarks.case", json.dumps(spec)], cwd=REPO, capture_output=True,
                       text=True, timeout=300, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert p.returncode == 0, p.stderr[-2000:]
    line = [l for l in p.stdout.splitlines() if l.startswith(case.MARK)][-1]
    r = json.loads(line[len(case.MARK):])
    assert r["img_size"] == 16 and r["batch"] == 2 and len(r["times_s"]) == 1
    assert r["peak_rss_mib"] >= r["rss_setup_mib"] > 0 and _finite_pos(r["images_per_s"])


def test_pixel_auroc_agrees_with_sklearn_and_torchmetrics():
    "On a seeded 1e5-pixel problem our binned pixel AUROC matches the exact AUROC of scikit-learn and torchmetrics."
    pytest.importorskip("sklearn"); pytest.importorskip("torchmetrics")
    maps, masks = case.pixel_problem(100_000, seed=3)
    v = {impl: case.pixel_auroc(impl, maps, masks) for impl in run.PIXEL_IMPLS}
    assert 0.8 < v["sklearn"] < 0.9
    assert abs(v["torchmetrics_exact"] - v["sklearn"]) < 1e-6
    assert abs(v["ours"] - v["sklearn"]) < 1e-4            # 65 536 equal-width bins
    assert abs(v["torchmetrics_binned"] - v["sklearn"]) < 1e-3  # 200 thresholds
    with pytest.raises(ValueError, match="multiple of"): case.pixel_problem(12_345)


@pytest.mark.parametrize("config", ["demo", "vit_b16_224"])
def test_vit_matches_timm_parameter_count(config):
    "Our ViT (ViTClassifier) and timm's VisionTransformer at the same configuration have equal parameter counts."
    pytest.importorskip("timm")
    ours, theirs, cfg = case.vit_pair(config)
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(ours) == n(theirs)
    if config == "demo":
        x = torch.rand(2, 1, cfg["img_size"], cfg["img_size"])
        assert ours(x).shape == theirs(x).shape == (2, 2)


@pytest.mark.parametrize("config", ["small", "paper"])
def test_unet_matches_diffusers_parameter_count(config):
    "Our UNet and diffusers' UNet2DModel (resnet down/up-sampling, scale-shift, mid attention) have equal counts."
    pytest.importorskip("diffusers")
    ours, theirs, cfg = case.unet_pair(config)
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert n(ours) == n(theirs)
    if config == "small":
        x, t = torch.rand(2, 1, 32, 32), torch.tensor([1, 500])
        assert ours(x, t).shape == theirs(x, t).sample.shape == x.shape


def test_flop_count_is_exact_for_matmuls():
    "count_flops gives the analytical count of a two-layer linear model, forward and backward, and of a matmul."
    B, a, b, c = 8, 64, 32, 16
    net = torch.nn.Sequential(torch.nn.Linear(a, b, bias=False), torch.nn.Linear(b, c, bias=False))
    x = torch.randn(B, a)  # no grad for the input: layer 1 computes only its weight gradient
    fwd = 2 * B * (a * b + b * c)
    assert case.count_flops(lambda: net(x)) == fwd
    bwd = 2 * (2 * B * b * c) + 2 * B * a * b
    assert case.count_flops(lambda: net(x).sum().backward()) == fwd + bwd
    m = torch.randn(48, 48)
    assert case.count_flops(lambda: m @ m) == 2 * 48 ** 3
    r = case.run_matmul(dict(device="cpu", dtype="float32", n=64, repeats=2))
    assert r["flops"] == 2 * 64 ** 3 and _finite_pos(r["gflops"])


def _minimal_result():
    return dict(command="python -m benchmarks.run", created_at="2026-01-01T00:00:00+00:00", quick=True,
                machine=dict(cpu_model="x", cpu_count=2, torch_threads_default=2, versions={"torch": "t"}, git_commit="c"),
                settings=dict(device="cpu", paper_steps=2), loadavg_before=[1, 1, 1], loadavg_after=[1, 1, 1], total_s=1.0)


def test_writer_refuses_to_overwrite(tmp_path):
    "Result files are named by device and time; a second write to the same names is refused, nothing is replaced."
    stamp = datetime.datetime(2026, 1, 1, 12, 0, 0, tzinfo=datetime.timezone.utc)
    paths = report.result_paths(tmp_path, "cpu2", stamp)
    assert paths["json"].name == "cpu2_2026-01-01T120000Z.json"
    written = report.write_results(_minimal_result(), paths, plot=False)
    assert [p.name for p in written] == ["cpu2_2026-01-01T120000Z.json", "cpu2_2026-01-01T120000Z.md"]
    before = paths["json"].read_text()
    with pytest.raises(FileExistsError, match="refusing"): report.write_results(_minimal_result(), paths, plot=False)
    with pytest.raises(FileExistsError, match="refusing"): report.check_free(paths)
    assert paths["json"].read_text() == before
    assert report.result_paths(tmp_path, "cpu2", stamp, "retry")["md"].name == "cpu2_2026-01-01T120000Z-retry.md"


def test_targets_are_judged_from_the_numbers():
    "met / met within noise / not met / not measured follow from the measured ratios and times."
    res = _minimal_result()
    res["compare"] = [dict(status="ok", spec=dict(kind="vit", config="demo", mode="train", steps=5), ratio_ours_over_theirs=q)
                      for q in (0.9, 1.03, 1.2)] + [dict(status="error", error="boom", spec=dict(kind="unet", config="small", mode="train", steps=5))]
    res["pixel"] = [dict(status="ok", n_pixels=10 ** 8, results={"ours": dict(auroc=0.8, median_s=2.5)})]
    t = report.summarise(res)["targets"]
    assert [r["status"] for r in t[:4]] == ["met", "met within noise", "not met", "not measured"]
    assert t[4]["status"] == "not measured here (no GPU)"
    assert t[5]["status"] == "met" and "2.50 s" in t[5]["evidence"]
    res["pixel"][0]["results"]["ours"]["median_s"] = 12.0
    assert report.summarise(res)["targets"][5]["status"] == "not met"


def test_bad_arguments_are_named():
    with pytest.raises(SystemExit, match="--methods"): run.parse_args(["--methods", "nope"])
    with pytest.raises(SystemExit, match="--sections"): run.parse_args(["--sections", "speed"])
    with pytest.raises(SystemExit, match="--pixel-sizes"): run.parse_args(["--pixel-sizes", "123"])
    with pytest.raises(ValueError, match="no preset"): case.build_method("baseline_ae", "paper")
    with pytest.raises(ValueError, match="fixed at img_size=64"): case.build_method("perceptual_ae", "demo", img_size=32)

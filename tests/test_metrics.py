"""uad_notebooks.metrics against scikit-learn, the exact path, per-volume aggregation, bootstrap, bad inputs."""
import time, tracemalloc

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from uad_notebooks.metrics import (best_dice, bootstrap_ci, dice, image_metrics, paired_bootstrap, pixel_metrics,
                                   threshold_at_fpr, to_numpy)


def _f1_max(y, s):
    p, r, _ = precision_recall_curve(y, s)
    return np.max(2 * p * r / np.maximum(p + r, 1e-300))


def _toy(n=24, size=32, seed=0):
    r = np.random.default_rng(seed)
    maps = r.gamma(2.0, 0.5, (n, 1, size, size)).astype(np.float32)
    masks = np.zeros_like(maps)
    for i in range(0, n, 2):
        y0, x0, w = r.integers(8, size - 14, 2).tolist() + [int(r.integers(3, 7))]
        masks[i, 0, y0:y0 + w, x0:x0 + w] = 1
    maps += masks * r.gamma(2.0, 0.6, maps.shape).astype(np.float32)
    yy, xx = np.mgrid[:size, :size]
    brains = np.broadcast_to((((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < (0.45 * size) ** 2)[None, None],
                             maps.shape).astype(np.float32)
    return maps, masks, brains, np.repeat([f"p{k}" for k in range(n // 4)], 4)


# ---- image level -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_image_metrics_match_sklearn(seed, ties):
    r = np.random.default_rng(seed)
    y = r.random(700) < 0.25
    s = r.normal(size=700) + y
    if ties: s = np.round(s, 1)
    m = image_metrics(s, y)
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert m["f1_max"] == pytest.approx(_f1_max(y, s), abs=1e-12)
    fpr, tpr, _ = roc_curve(y, s)
    assert m["sens_at_spec_90"] == pytest.approx(tpr[fpr <= 0.1 + 1e-12].max(), abs=1e-12)
    assert m["sens_at_spec_95"] == pytest.approx(tpr[fpr <= 0.05 + 1e-12].max(), abs=1e-12)
    pred = s >= m["f1_threshold"]
    f1 = 2 * (pred & y).sum() / (pred.sum() + y.sum())
    assert f1 == pytest.approx(m["f1_max"], abs=1e-12)
    assert (m["n"], m["n_abnormal"]) == (700, int(y.sum()))


def test_image_metrics_torch_and_custom_specificities():
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(3)
    y = (r.random(200) < 0.5).astype(np.int64)
    s = r.normal(size=200) + y
    m = image_metrics(torch.tensor(s, dtype=torch.float32), torch.tensor(y), specificities=(0.8, 0.99))
    assert m["auroc"] == pytest.approx(roc_auc_score(y, s.astype(np.float32)), abs=1e-12)
    assert {"sens_at_spec_80", "sens_at_spec_99"} <= set(m)
    assert to_numpy(torch.ones(2, dtype=torch.bfloat16)).dtype == np.float32


@pytest.mark.parametrize("scores,labels,msg", [
    ([0.1, 0.2, 0.3], [1, 1, 1], "only class 1"),
    ([0.1, 0.2, 0.3], [0, 0, 0], "only class 0"),
    ([0.1, np.nan, 0.3], [0, 1, 1], "NaN"),
    ([0.1, np.inf, 0.3], [0, 1, 1], "infinite"),
    ([0.1, 0.2], [0, 1, 1], "`labels` has 3 entries"),
    ([0.1, 0.2], [0, 2], "only 0"),
    ([], [], "empty"),
])
def test_image_metrics_errors(scores, labels, msg):
    with pytest.raises(ValueError, match=msg): image_metrics(scores, labels)


# ---- bootstrap ----------------------------------------------------------------------------------------------------
def test_bootstrap_contains_estimate_and_narrows():
    widths = []
    for n in (100, 400, 1600):
        r = np.random.default_rng(n)
        y = r.random(n) < 0.4
        s = r.normal(size=n) + y
        m = image_metrics(s, y, n_boot=300, seed=1)
        for k in ("auroc", "ap", "f1_max", "sens_at_spec_90"):
            lo, hi = m[f"{k}_ci"]
            assert lo <= m[k] <= hi, (k, m)
        widths.append(m["auroc_ci"][1] - m["auroc_ci"][0])
    assert widths[0] > widths[1] > widths[2], widths
    # roughly 1/sqrt(n): 16x the data, about a quarter of the width
    assert 0.1 < widths[2] / widths[0] < 0.5, widths


def test_bootstrap_ci_generic_and_groups():
    r = np.random.default_rng(0)
    x = r.normal(size=200)
    lo, hi = bootstrap_ci(np.mean, x, n_boot=500)
    assert lo < x.mean() < hi
    assert bootstrap_ci(np.mean, x, n_boot=500) == (lo, hi)  # seeded
    # strongly clustered data: resampling groups gives a wider interval than resampling items
    g = np.repeat(np.arange(10), 20)
    xc = np.repeat(r.normal(size=10), 20) + 0.01 * r.normal(size=200)
    wi = np.subtract(*bootstrap_ci(np.mean, xc, n_boot=500)[::-1])
    wg = np.subtract(*bootstrap_ci(np.mean, xc, n_boot=500, groups=g)[::-1])
    assert wg > 3 * wi, (wg, wi)
    with pytest.raises(ValueError, match="`arrays\\[1\\]` has 3"): bootstrap_ci(np.mean, x, x[:3])
    with pytest.raises(ValueError, match="`groups` has"): bootstrap_ci(np.mean, x, groups=g[:5])
    with pytest.raises(ValueError, match="`alpha`"): bootstrap_ci(np.mean, x, alpha=2)


def test_paired_bootstrap():
    r = np.random.default_rng(0)
    y = r.random(400) < 0.5
    a, b = r.normal(size=400) + 1.5 * y, r.normal(size=400) + 0.5 * y
    res = paired_bootstrap("auroc", a, b, y, n_boot=300)
    assert res["diff"] == pytest.approx(roc_auc_score(y, a) - roc_auc_score(y, b), abs=1e-12)
    assert res["ci"][0] > 0 and res["p_value"] < 0.01
    res2 = paired_bootstrap(lambda s, l: average_precision_score(l, s), b, b + 1e-6 * r.normal(size=400), y, n_boot=300)
    assert res2["ci"][0] <= 0 <= res2["ci"][1] and res2["p_value"] > 0.2
    with pytest.raises(ValueError, match="`scores_b` has"): paired_bootstrap("auroc", a, b[:10], y)


# ---- pixel level --------------------------------------------------------------------------------------------------
def test_pixel_metrics_match_sklearn_binned_and_exact():
    maps, masks, brains, _ = _toy()
    inb = brains > 0.5
    y, s = masks[inb], maps[inb]
    pm = pixel_metrics(maps, masks, brains)
    assert pm["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-3)
    assert pm["auprc"] == pytest.approx(average_precision_score(y, s), abs=1e-3)
    assert pm["best_dice"] == pytest.approx(_f1_max(y, s), abs=1e-3)
    pe = pixel_metrics(maps, masks, brains, n_bins=None)
    assert pe["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-10)
    assert pe["auprc"] == pytest.approx(average_precision_score(y, s), abs=1e-10)
    assert pe["best_dice"] == pytest.approx(_f1_max(y, s), abs=1e-10)
    assert dice(s >= pe["best_dice_threshold"], y) == pytest.approx(pe["best_dice"], abs=1e-10)
    assert pe["n_pixels"] == inb.sum() and pe["n_positive"] == (masks[inb] > 0).sum()
    # (N,H,W) input gives the same numbers; coarse bins are still close
    assert pixel_metrics(maps[:, 0], masks[:, 0], brains[:, 0])["auroc"] == pm["auroc"]
    assert pixel_metrics(maps, masks, brains, n_bins=256)["auroc"] == pytest.approx(pe["auroc"], abs=1e-2)


def test_pixel_metrics_ignore_outside_brain():
    maps, masks, brains, _ = _toy()
    wild = maps + 1000 * (1 - brains) * np.random.default_rng(0).random(maps.shape).astype(np.float32)
    assert pixel_metrics(wild, masks, brains, n_bins=None)["auroc"] == pixel_metrics(maps, masks, brains, n_bins=None)["auroc"]


def test_pixel_binned_close_on_continuous_scores():
    r = np.random.default_rng(7)
    maps = r.normal(size=(50, 1, 40, 40)).astype(np.float32)
    masks = (r.random(maps.shape) < 0.05).astype(np.float32)
    maps += 0.8 * masks
    pm = pixel_metrics(maps, masks)
    assert pm["auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-4)
    assert pm["auprc"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-3)


def test_per_volume_and_healthy_threshold():
    maps, masks, brains, subjects = _toy()
    inb = brains > 0.5
    healthy = np.random.default_rng(5).gamma(2.0, 0.5, (16, 1, 32, 32)).astype(np.float32)
    pv = pixel_metrics(maps, masks, brains, subjects=subjects, healthy_maps=healthy, healthy_brains=brains[:16],
                       fpr=0.05, n_bins=None)
    t = threshold_at_fpr(healthy, 0.05, brains=brains[:16])
    h = healthy[brains[:16] > 0.5]
    assert (h > t).mean() <= 0.05 < (h >= t).mean()
    assert pv["threshold_at_fpr"] == t
    assert pv["dice_at_fpr"] == pytest.approx(dice(maps[inb] > t, masks[inb]), abs=1e-12)
    au, ap, bd, dv = [], [], [], []
    for sj in np.unique(subjects):
        k = subjects == sj
        y, s = masks[k][inb[k]], maps[k][inb[k]]
        if y.sum() == 0: continue
        au.append(roc_auc_score(y, s)); ap.append(average_precision_score(y, s)); bd.append(_f1_max(y, s))
        dv.append(dice(s > t, y))
    assert pv["auroc_per_volume"] == pytest.approx(np.mean(au), abs=1e-10)
    assert pv["auprc_per_volume"] == pytest.approx(np.mean(ap), abs=1e-10)
    assert pv["best_dice_per_volume"] == pytest.approx(np.mean(bd), abs=1e-10)
    assert pv["dice_per_volume"] == pytest.approx(np.mean(dv), abs=1e-10)
    assert pv["n_volumes"] == 6 and pv["n_volumes_with_lesion"] == len(au)


def test_per_volume_skips_volumes_without_lesion():
    maps, masks, brains, _ = _toy(n=16)
    subjects = np.array(["a"] * 4 + ["b"] * 4 + ["c"] * 8)
    masks[4:8] = 0  # subject b: no lesion
    pv = pixel_metrics(maps, masks, brains, subjects=subjects, n_bins=None)
    inb = brains > 0.5
    ref = [roc_auc_score(masks[k][inb[k]], maps[k][inb[k]]) for k in (subjects == "a", subjects == "c")]
    assert pv["n_volumes"] == 3 and pv["n_volumes_with_lesion"] == 2
    assert pv["auroc_per_volume"] == pytest.approx(np.mean(ref), abs=1e-10)
    # subjects need not be contiguous
    perm = np.random.default_rng(0).permutation(16)
    pp = pixel_metrics(maps[perm], masks[perm], brains[perm], subjects=subjects[perm], n_bins=None)
    assert pp["auroc_per_volume"] == pytest.approx(pv["auroc_per_volume"], abs=1e-12)


def test_fixed_threshold_and_best_dice_function():
    maps, masks, brains, subjects = _toy()
    inb = brains > 0.5
    pm = pixel_metrics(maps, masks, brains, threshold=1.5)
    assert pm["dice"] == pytest.approx(dice(maps[inb] > 1.5, masks[inb]), abs=1e-12)
    d, t = best_dice(maps, masks, brains, n_bins=None)
    assert d == pytest.approx(_f1_max(masks[inb], maps[inb]), abs=1e-10)
    assert dice(maps[inb] >= t, masks[inb]) == pytest.approx(d, abs=1e-10)


def test_pixel_bootstrap_contains_estimates():
    maps, masks, brains, subjects = _toy(n=40)
    healthy = np.random.default_rng(5).gamma(2.0, 0.5, (16, 1, 32, 32)).astype(np.float32)
    pb = pixel_metrics(maps, masks, brains, subjects=subjects, healthy_maps=healthy, n_boot=400)
    for k in ("auroc", "auprc", "best_dice", "dice_at_fpr", "auroc_per_volume", "auprc_per_volume",
              "best_dice_per_volume", "dice_per_volume"):
        lo, hi = pb[f"{k}_ci"]
        assert lo <= pb[k] <= hi and hi - lo < 0.5, (k, pb[k], lo, hi)
    # image groups when subjects are unknown; a bigger test set gives a narrower interval
    w = []
    for n in (16, 64):
        maps, masks, brains, _ = _toy(n=n, seed=n)
        p = pixel_metrics(maps, masks, brains, n_boot=300)
        assert p["auroc_ci"][0] <= p["auroc"] <= p["auroc_ci"][1]
        w.append(p["auroc_ci"][1] - p["auroc_ci"][0])
    assert w[1] < w[0], w


def test_pixel_errors():
    maps, masks, brains, subjects = _toy()
    with pytest.raises(ValueError, match="`masks` has shape"): pixel_metrics(maps, masks[:, :, :16])
    with pytest.raises(ValueError, match="`brains` has shape"): pixel_metrics(maps, masks, brains[:3])
    with pytest.raises(ValueError, match="no positive pixel"): pixel_metrics(maps, np.zeros_like(masks))
    with pytest.raises(ValueError, match="every"): pixel_metrics(maps, np.ones_like(masks))
    bad = maps.copy(); bad[3, 0, 5, 5] = np.nan
    with pytest.raises(ValueError, match="`maps` holds NaN"): pixel_metrics(bad, masks)
    with pytest.raises(ValueError, match="`healthy_maps` holds NaN"): pixel_metrics(maps, masks, healthy_maps=bad)
    with pytest.raises(ValueError, match="`subjects` has 5"): pixel_metrics(maps, masks, subjects=subjects[:5])
    with pytest.raises(ValueError, match="\\(N,1,H,W\\)"): pixel_metrics(np.zeros((2, 3, 4, 4)), np.zeros((2, 3, 4, 4)))
    with pytest.raises(ValueError, match="select no pixel"): pixel_metrics(maps, masks, np.zeros_like(brains))
    with pytest.raises(ValueError, match="`fpr`"): threshold_at_fpr(maps, fpr=0)
    with pytest.raises(ValueError, match="`pred` has shape"): dice(np.zeros(3), np.zeros(4))


@pytest.mark.slow
def test_pixel_metrics_1e8_pixels():
    """10^8 pixels: time and memory are printed (run with -s), not asserted; the result is checked on a subsample."""
    r = np.random.default_rng(0)
    n = 24_415  # 24_415 * 64 * 64 = 1.0e8 pixels
    maps = r.random((n, 1, 64, 64), dtype=np.float32)
    masks = (r.random(maps.shape, dtype=np.float32) < 0.02).astype(np.float32)
    maps += 0.3 * masks
    brains = np.ones_like(maps)
    tracemalloc.start()  # numpy reports its buffers to tracemalloc
    t0 = time.perf_counter()
    pm = pixel_metrics(maps, masks, brains)
    dt = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1] / 1e9
    tracemalloc.stop()
    print(f"\n{maps.size / 1e8:.2f}e8 pixels: {dt:.1f} s, peak extra memory {peak:.2f} GB (inputs: {3 * maps.nbytes / 1e9:.1f} GB)")
    k = slice(0, 1000)  # 4.1e6 pixels: the same distribution
    assert pm["auroc"] == pytest.approx(roc_auc_score(masks[k].ravel(), maps[k].ravel()), abs=3e-3)
    assert pm["n_pixels"] == maps.size


def test_small_chunks_and_interleaved_subjects(monkeypatch):
    """Volumes straddling chunk borders and subjects interleaved in any order give the same numbers as sklearn."""
    import uad_notebooks.metrics as M
    maps, masks, brains, _ = _toy(n=30)
    r = np.random.default_rng(1)
    subjects = r.choice(["a", "b", "c", "d"], size=30)
    healthy = r.gamma(2.0, 0.5, (8, 1, 32, 32)).astype(np.float32)
    ref = pixel_metrics(maps, masks, brains, subjects=subjects, healthy_maps=healthy, n_bins=None)
    monkeypatch.setattr(M, "_CHUNK", 3 * 32 * 32 + 5)  # 3 maps per chunk
    small = pixel_metrics(maps, masks, brains, subjects=subjects, healthy_maps=healthy, n_bins=None)
    assert small == pytest.approx(ref, abs=1e-12)
    inb = brains > 0.5
    au, dv = [], []
    for sj in np.unique(subjects):
        k = subjects == sj
        y, s = masks[k][inb[k]], maps[k][inb[k]]
        if y.sum(): au.append(roc_auc_score(y, s)); dv.append(dice(s > ref["threshold_at_fpr"], y))
    assert ref["auroc_per_volume"] == pytest.approx(np.mean(au), abs=1e-10)
    assert ref["dice_per_volume"] == pytest.approx(np.mean(dv), abs=1e-10)
    # volumes with more pixels than bins take the bincount branch of the per-volume histograms
    coarse = pixel_metrics(maps, masks, brains, subjects=subjects, n_bins=1024)
    assert coarse["auroc_per_volume"] == pytest.approx(ref["auroc_per_volume"], abs=5e-3)
    assert coarse["auprc_per_volume"] == pytest.approx(ref["auprc_per_volume"], abs=2e-2)
    pb1 = M.pixel_metrics(maps, masks, brains, subjects=subjects, n_boot=100)
    monkeypatch.setattr(M, "_CHUNK", 1 << 22)
    pb2 = M.pixel_metrics(maps, masks, brains, subjects=subjects, n_boot=100)
    assert pb1.keys() == pb2.keys()
    for k in pb1:  # the bootstrap histograms do not depend on chunking either
        np.testing.assert_allclose(np.ravel(pb1[k]), np.ravel(pb2[k]), atol=1e-9, err_msg=k)

"""Method 4 (masked DDPM): public API, schedule closed forms, seeded pinned numbers, bad input, and the repro smoke run."""
import math

import numpy as np
import pytest
import torch

from uad_notebooks import MaskedDDPM
from uad_notebooks.ddpm import CosineSchedule, ddim_sample, eps_from_x0
from uad_notebooks.unet import unet_mddpm, unet_small, n_params, AttentionBlock
from uad_notebooks.simplex import simplex_field, simplex_noise_like
from uad_notebooks.patched import grid_box_masks, fft_filter, mask_slices, patched_restore
from uad_notebooks.masked_ddpm import (VARIANTS, bisection_threshold, remove_small_components, volume_metrics,
                                       erode_cross, mddpm_paper, mddpm_small, median_filter2d, volume_postprocess)
from uad_notebooks.data import ArrayDataset
from uad_notebooks.evaluate import evaluate, predict


def _phantom(n=2, size=64):
    yy, xx = torch.meshgrid(torch.arange(float(size)), torch.arange(float(size)), indexing="ij")
    c = size / 2
    brain = ((((yy - c) / (0.4 * size)) ** 2 + ((xx - c) / (0.34 * size)) ** 2) < 1).float()[None, None].repeat(n, 1, 1, 1)
    return brain * (0.5 + 0.2 * torch.sin(xx / 4)), brain


# --- schedule ---------------------------------------------------------------------------------------------------
def test_cosine_schedule_check_values():
    s = CosineSchedule()
    for t, v in [(0, 0.999959), (249, 0.847012), (499, 0.493844)]:
        assert abs(s.alpha_bar[t].item() - v) < 1e-6
    assert s.alpha_bar[999] < 1e-6 and s.betas.max() <= 0.999


def test_cosine_schedule_closed_form():
    T, sft = 1000, 0.008
    s = CosineSchedule(T, sft)
    f = lambda t: math.cos((t / T + sft) / (1 + sft) * math.pi / 2) ** 2
    for t in (0, 10, 500, 900):  # before the 0.999 clip bites, alpha_bar[t] = f(t+1) / f(0)
        assert abs(s.alpha_bar[t].item() - f(t + 1) / f(0)) < 1e-9
    assert torch.allclose(s.alpha_bar, torch.cumprod(1 - s.betas, 0))


def test_q_sample_and_ddim_oracle():
    s = CosineSchedule()
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.rand(3, 1, 8, 8, generator=g) * 2 - 1, torch.randn(3, 1, 8, 8, generator=g)
    t = torch.tensor([0, 499, 999])
    xt = s.q_sample(x0, t, eps)
    ab = s.alpha_bar[t].float().view(-1, 1, 1, 1)
    assert torch.allclose(xt, ab.sqrt() * x0 + (1 - ab).sqrt() * eps)
    assert torch.allclose(eps_from_x0(s, xt, t, x0), eps, atol=1e-3)
    assert torch.allclose(ddim_sample(lambda x, t: x0, s, s.q_sample(x0, torch.full((3,), 999), eps), steps=5), x0)
    with pytest.raises(ValueError, match="t must lie"): s.q_sample(x0, torch.tensor([0, 1, 1000]), eps)


# --- network ------------------------------------------------------------------------------------------------------
def test_unet_presets():
    big = unet_mddpm()
    assert n_params(big) == 37_513_857  # computed: paper preset (spec B.3)
    assert sum(isinstance(m, AttentionBlock) for m in big.modules()) == 1  # middle block only
    net = unet_small()
    out = net(torch.randn(2, 1, 64, 64), torch.tensor([0, 999]))
    assert out.shape == (2, 1, 64, 64) and out.abs().max() == 0  # zero-initialised head


# --- simplex noise -------------------------------------------------------------------------------------------------
def test_simplex_seeded_and_shared():
    f = simplex_field(96, 96, generator=torch.Generator().manual_seed(0))
    assert abs(f.sum().item() - (-438.77484)) < 1e-2 and abs(f[10, 20].item() - (-0.0710632)) < 1e-5  # pinned
    assert 0.4 < f.std() < 0.7
    n = simplex_noise_like(torch.zeros(4, 1, 32, 32), generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(n[0], n[i]) for i in range(4))


# --- patches and masking -------------------------------------------------------------------------------------------
def test_grid_covers_once_and_patched_restore():
    b = grid_box_masks(96, 48)
    assert b.shape[0] == 4 and torch.equal(b.sum(0), torch.ones(1, 96, 96))
    x, xt = torch.rand(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
    assert torch.equal(patched_restore(lambda inp: inp, x, xt, grid_box_masks(32, 16)), xt)
    with pytest.raises(ValueError, match="must divide"): grid_box_masks(96, 40)


def test_fft_low_plus_high_is_identity():
    x = torch.rand(3, 1, 96, 96)
    for v in (2, 6, 10):
        assert torch.allclose(fft_filter(x, v, "low") + fft_filter(x, v, "high"), x, atol=1e-5)


def test_masking_keeps_background_and_is_seeded():
    img, brain = _phantom(4, 96)
    for mode in ("mim", "mfm", "both"):
        xc, rect = mask_slices(img, brain, mode, generator=torch.Generator().manual_seed(2))
        assert xc[brain == 0].abs().max() == 0
        assert torch.equal(xc * (1 - rect), img * (1 - rect))
    img, brain = _phantom(2, 64)
    xc, r = mask_slices(img, brain, "mfm", generator=torch.Generator().manual_seed(2))
    assert abs(xc.sum().item() - 1644.9464) < 1e-2 and r.sum().item() == 119.0  # pinned
    with pytest.raises(ValueError, match="mode"): mask_slices(img, brain, "zeros")


# --- the method ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", VARIANTS)
def test_api_forward(variant):
    img, brain = _phantom()
    torch.manual_seed(0)
    m = MaskedDDPM(img_size=64, in_chans=1, variant=variant, noise="simplex", net="small")
    loss = m.training_loss({"image": img, "brain": brain})["loss"]
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    amap, score = m.anomaly_map(img, brain), m.anomaly_score(img)
    assert amap.shape == (2, 1, 64, 64) and score.shape == (2,) and torch.isfinite(score).all()
    assert amap[erode_cross(brain, 2) == 0].abs().max() == 0


def test_pinned_loss_and_score():
    img, brain = _phantom()
    torch.manual_seed(0)
    m = MaskedDDPM(64, variant="mddpm", net="small")
    torch.nn.init.normal_(m.net.head[-1].weight, std=0.02, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(1)
    assert abs(m.training_loss({"image": img, "brain": brain})["loss"].item() - 0.18006605) < 1e-4
    m.eval()
    assert np.allclose(m.anomaly_score(img, brain).numpy(), [0.1387621, 0.1387621], atol=1e-4)


def test_gaussian_noise_and_paper_preset():
    img, brain = _phantom()
    m = MaskedDDPM(64, variant="pddpm", noise="gaussian", net="small")
    assert torch.equal(m.anomaly_map(img, brain), m.anomaly_map(img, brain))  # seeded test-time noise
    p = mddpm_paper()
    assert (p.img_size, p.patch_size, p.test_t, p.erode_iters) == (96, 48, 499, 3)


def test_bad_input():
    with pytest.raises(ValueError, match="variant"): MaskedDDPM(64, variant="mdpm", net="small")
    with pytest.raises(ValueError, match="noise"): MaskedDDPM(64, noise="perlin", net="small")
    with pytest.raises(ValueError, match="test_t"): MaskedDDPM(64, test_t=1000, net="small")
    with pytest.raises(ValueError, match="net"): MaskedDDPM(64, net="huge")
    m = MaskedDDPM(64, net="small")
    with pytest.raises(ValueError, match="x must be"): m.anomaly_map(torch.zeros(2, 1, 48, 48))


def test_postprocessing():
    b = np.zeros((3, 10, 10), bool); b[0, 0, :7] = True; b[1:3, 5:7, 5:7] = True
    out = remove_small_components(b, 8)
    assert not out[0].any() and out[1:].sum() == 8
    rng = np.random.default_rng(0)
    gt = np.zeros((20, 32, 32)); gt[:, 10:18, 10:18] = 1
    smap = np.where(gt > 0, rng.normal(0.7, 0.1, gt.shape), rng.normal(0.2, 0.1, gt.shape)).clip(0)
    thr, d = bisection_threshold(smap, gt)
    assert 0.35 < thr < 0.55 and d > 0.9
    vm = volume_metrics(smap[:, None], gt[:, None], np.repeat(["a", "b", "c", "d"], 5), thr, n_boot=100)
    assert vm["n_volumes"] == 4 and vm["dice"] > 0.8 and vm["dice_ci"][0] <= vm["dice"] <= vm["dice_ci"][1]


# --- post-processing on volumes ---------------------------------------------------------------------------------------
def _volume_dataset(seed=0, n_slices=(7, 6)):
    "Two subjects whose slices come in shuffled dataset order, with their slice numbers in the manifest; lesions in both."
    rng = np.random.default_rng(seed)
    img, brain = _phantom(sum(n_slices), 32)
    img = img * (1 + 0.3 * torch.from_numpy(rng.random((len(img), 1, 1, 1))).float())
    masks = torch.zeros_like(img); subjects, slices, k = [], [], 0
    for s, n in enumerate(n_slices):
        for z in rng.permutation(n):
            subjects.append(f"v{s}"); slices.append(int(z))
            if 2 <= z <= 4: masks[k, 0, 12:18, 12:18] = 1; img[k, 0, 12:18, 12:18] += 0.4
            k += 1
    ds = ArrayDataset(img, (masks.flatten(1).sum(1) > 0).long(), masks, brain, subjects, meta=[{"slice": z} for z in slices])
    return ds, np.array(slices)


def test_volume_postprocess_is_scipy_3d_median_in_slice_order():
    """The 3-D filter equals scipy.ndimage.median_filter(size=5) of each subject's volume stacked in slice order, whatever
    the dataset order; the slice score is the mean of the filtered map inside the brain mask."""
    from scipy import ndimage
    ds, slices = _volume_dataset()
    torch.manual_seed(0)
    m = mddpm_small(32, variant="pddpm", median="3d")
    torch.nn.init.normal_(m.net.head[-1].weight, std=0.05)
    p = predict(m, ds, batch_size=5, progress=False)
    out = volume_postprocess(p, ds)
    subj = np.asarray(p.subjects)
    for s in ("v0", "v1"):
        idx = np.flatnonzero(subj == s)
        order = idx[np.argsort(slices[idx])]
        want = ndimage.median_filter(p.maps[order, 0], size=5)                  # (D, H, W) in slice order
        np.testing.assert_allclose(out.maps[order, 0], want, atol=1e-7)
        wrong = ndimage.median_filter(p.maps[idx, 0], size=5)                   # the stack in dataset order
        assert not np.allclose(out.maps[idx, 0], wrong, atol=1e-6)
    b = p.brains[:, 0] > 0.5
    np.testing.assert_allclose(out.scores, (out.maps[:, 0] * b).sum((1, 2)) / b.sum((1, 2)), rtol=1e-5)
    with pytest.raises(ValueError, match="no slice numbers"):
        volume_postprocess(p, ArrayDataset(ds.images, ds.labels, subjects=ds.subjects))


def test_demo_path_unchanged_and_evaluate_postprocess():
    """The default (median='2d', the demo's) filters each slice as before; evaluate(postprocess=volume_postprocess)
    returns the predictions volume_postprocess makes and the metrics of those."""
    ds, _ = _volume_dataset(1)
    torch.manual_seed(0)
    m2 = mddpm_small(32, variant="pddpm")
    torch.nn.init.normal_(m2.net.head[-1].weight, std=0.05)
    m3 = mddpm_small(32, variant="pddpm", median="3d", net=m2.net)
    assert m2.median == "2d" and mddpm_paper().median == "2d"
    x, brain = ds.images[:4], ds.brains[:4]
    assert torch.equal(m2.anomaly_map(x, brain), median_filter2d(m3.anomaly_map(x, brain), 5))
    res = evaluate(m3, ds, ds, n_boot=0, progress=False, postprocess=volume_postprocess)
    want = volume_postprocess(predict(m3, ds, progress=False), ds)
    np.testing.assert_allclose(res.predictions.maps, want.maps, atol=1e-7)
    np.testing.assert_allclose(res.predictions.scores, want.scores, atol=1e-7)
    from uad_notebooks.metrics import image_metrics
    assert abs(res["image"]["auroc"] - image_metrics(want.scores, want.labels)["auroc"]) < 1e-12


def test_volume_metrics_respect_slice_order():
    """3-D components are found in the volume stacked in slice order: two 4-voxel blobs on neighbouring slices form one
    8-voxel component that survives the filter; on slices that are not neighbours they are removed."""
    bm, bg = np.zeros((3, 1, 8, 8), np.float32), np.zeros((3, 1, 8, 8))
    bm[0, 0, 2:4, 2:4] = bm[2, 0, 2:4, 2:4] = 1; bg[:, 0, 2:4, 2:4] = 1
    near = volume_metrics(bm, bg, ["v"] * 3, 0.5, n_boot=0, slices=[0, 2, 1])
    far = volume_metrics(bm, bg, ["v"] * 3, 0.5, n_boot=0)
    assert near["dice"] == pytest.approx(2 * 8 / (8 + 12)) and far["dice"] == 0.0


# --- the reproduction notebook (papermill, smoke) --------------------------------------------------------------------
@pytest.mark.notebook
def test_repro_mddpm_smoke(run_repro):
    metrics, out = run_repro("repro_mddpm")
    assert metrics["smoke"] is True and metrics["variants"] == ["ddpm", "pddpm", "mddpm"]
    for v in metrics["variants"]:
        r = metrics["results"][v]
        for k in ("dice", "auroc", "auprc"):
            assert 0 <= r["volume"][k] <= 1 and len(r["volume"][k + "_ci"]) == 2
        assert 0 <= r["image"]["auroc"] <= 1 and r["train"]["steps"] == metrics["config"]["max_steps"]
        assert (out / f"examples_{v}.png").exists()
    assert metrics["paper"] is None and "issues" in metrics["paper_note"]
    assert metrics["provenance"]["params"]["smoke"] is True
    # the demo: validation-loss selection on the healthy validation subjects, fp32, the per-slice 2-D median (flagged)
    assert metrics["select"] == "val_loss" and metrics["amp"] is False and metrics["median"] == "2d"
    for v in metrics["variants"]:
        sel = metrics["results"][v]["selection"]
        assert sel["selected"] == "val_loss" and len(sel["val_history"]) == 3 and sel["best_step"] is not None
    card = {row["point"]: row for row in metrics["protocol"]}
    assert card["median filter"]["match"] is False and "2-D" in card["median filter"]["ours"] and card["median filter"]["note"]
    assert card["precision"]["match"] is True and card["checkpoint selection"]["match"] is True
    assert metrics["protocol_title"] == "mDDPM protocol: demo"

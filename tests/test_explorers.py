"""The explorers' view functions and widgets on tiny untrained models (no kernel needed)."""
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from uad_notebooks import explorers as E
from uad_notebooks.mae import MAE
from uad_notebooks.memmc_mae import MemMCMAE
from uad_notebooks.masked_ddpm import MaskedDDPM
from uad_notebooks.metrics import dice
from uad_notebooks.unet import unet_small


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _images(n=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=g) * 0.5
    brains = torch.zeros(n, 1, size, size); brains[..., 2:-2, 2:-2] = 1
    masks = torch.zeros(n, 1, size, size); masks[..., 4:9, 4:9] = 1
    return x * brains + masks * 0.4, masks, brains


@pytest.fixture(scope="module")
def mae():
    torch.manual_seed(0)
    return MAE(img_size=16, patch_size=4, embed_dim=16, depth=1, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
               decoder_num_heads=2).eval()


@pytest.fixture(scope="module")
def memmc():
    torch.manual_seed(0)
    return MemMCMAE(img_size=16, patch_size=4, embed_dim=16, depth=2, num_heads=2, decoder_embed_dim=16, decoder_depth=1,
                    decoder_num_heads=2, n_mem=4, n_eval_masks=2).eval()


@pytest.fixture(scope="module")
def ddpm():
    torch.manual_seed(0)
    return MaskedDDPM(img_size=16, variant="ddpm", noise="gaussian", T=100, test_t=49, erode_iters=0, median_size=1,
                      net=unet_small(model_channels=8, groups=4, head_channels=16)).eval()


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.5, 0.75, 0.9])
def test_mask_ratio_view_visible_fraction(mae, ratio):
    x, m, b = _images()
    fig, v = E.mask_ratio_view(mae, x, ratio, masks=m, brains=b)
    assert isinstance(fig, Figure)
    L = (16 // 4) ** 2
    assert v["visible_fraction"] == pytest.approx(int(L * (1 - ratio)) / L)
    assert v["mask_ratio"] == ratio and {"error_in_lesions", "error_elsewhere"} <= set(v)


def test_mask_ratio_view_error_is_zero_on_visible_patches(mae):
    x, m, b = _images()
    rec, hid, amap = E._mae_arrays(mae, x, 0.5, seed=3)
    assert float(amap[hid == 0].abs().max()) == 0.0      # visible patches are pasted back
    assert float(amap[hid == 1].mean()) > 0


def test_mask_ratio_figure_and_widget(mae):
    x, m, b = _images()
    fig, vals = E.mask_ratio_figure(mae, x[0], ratios=(0.25, 0.75), mask=m[0], brain=b[0])
    assert isinstance(fig, Figure) and [v["mask_ratio"] for v in vals] == [0.25, 0.75]
    assert vals[1]["visible_fraction"] < vals[0]["visible_fraction"]
    w = E.mask_ratio_explorer(mae, x, m, b)
    assert w.values["mask_ratio"] == 0.75
    w.controls["mask_ratio"].value = 0.5                   # drives the callback as a slider move would
    assert w.values["visible_fraction"] == pytest.approx(0.5)
    w.controls["seed"].value = 1
    assert w.values["visible_fraction"] == pytest.approx(0.5)


def test_memory_view_and_widget(memmc):
    x, m, b = _images()
    xn = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.5 * b   # normal: no lesion
    fig, v = E.memory_view(memmc, xn, x, m, block=1, index=0)
    assert isinstance(fig, Figure)
    mn, ma = memmc.memory_mass_map(xn), memmc.memory_mass_map(x)
    les = E.lesion_patches(m, 4)
    assert les.shape == (3, 4, 4) and int(les.sum()) == 3 * 1    # the 5x5 lesion covers > 1/4 of one 4x4 patch only
    assert v["mass_normal_images"] == pytest.approx(float(mn[:, 1].mean()), abs=1e-6)
    assert v["mass_lesion_patches"] == pytest.approx(float(ma[:, 1][les].mean()), abs=1e-6)
    assert v["mass_other_patches"] == pytest.approx(float(ma[:, 1][~les].mean()), abs=1e-6)
    assert 0 < v["mass_normal_images"] < 1
    _, vm = E.memory_view(memmc, xn, x, m, block="mean")
    assert vm["mass_normal_images"] == pytest.approx(float(mn.mean()), abs=1e-6)
    with pytest.raises(ValueError, match="block"):
        E.memory_view(memmc, xn, x, m, block=5)
    w = E.memory_explorer(memmc, xn, x, m)
    assert w.values["block"] == "mean"
    w.controls["block"].value = 0
    assert w.values["block"] == 0 and w.values["mass_normal_images"] == pytest.approx(float(mn[:, 0].mean()), abs=1e-6)


def test_noise_view_t0_is_x0_and_noise_grows(ddpm):
    x, m, b = _images()
    fig, v0 = E.noise_view(ddpm, x, 0, brains=b, masks=m)
    assert isinstance(fig, Figure)
    xt, x0_hat, amap = E._noise_arrays(ddpm, x, 0, b)
    ab0 = float(ddpm.schedule.alpha_bar[0])
    assert torch.allclose(xt, x, atol=6 * (1 - ab0) ** 0.5 + 1e-3)   # x_t at t=0 is x0 up to sqrt(1 - alpha_bar_0)
    changes = [E.noise_view(ddpm, x, t, brains=b)[1]["mean_abs_xt_minus_x0"] for t in (0, 20, 50, 99)]
    assert changes == sorted(changes) and changes[0] < (1 - ab0) ** 0.5 < 0.1 < changes[-1]
    assert ddpm.test_t == 49                               # the view restores the model's test level
    assert amap.shape == (3, 1, 16, 16)
    with pytest.raises(ValueError, match="t must lie"):
        E.noise_view(ddpm, x, 100)


def test_noise_figure_and_widget(ddpm):
    x, m, b = _images()
    fig, vals = E.noise_figure(ddpm, x[0], ts=(0, 99), brain=b[0], mask=m[0])
    assert isinstance(fig, Figure) and [v["t"] for v in vals] == [0, 99]
    w = E.noise_explorer(ddpm, x, b, m)
    assert w.values["t"] == 49
    w.controls["t"].value = 0
    ab0 = float(ddpm.schedule.alpha_bar[0])
    assert w.values["t"] == 0 and w.values["mean_abs_xt_minus_x0"] < (1 - ab0) ** 0.5


def _maps():
    x, m, b = _images(n=4)
    g = torch.Generator().manual_seed(1)
    maps = (torch.rand(4, 1, 16, 16, generator=g) * 0.6 + 0.5 * m) * b   # lesions brighter on average
    return maps, m, b, x


def test_threshold_values_match_metrics_dice():
    maps, m, b, _ = _maps()
    v = E.threshold_values(maps, m, 0.4, b)
    pred = (maps > 0.4) & (b > 0.5)
    assert v["dice"] == pytest.approx(dice(pred, m))
    healthy = (b > 0.5) & (m < 0.5)
    assert v["fpr"] == pytest.approx(float(pred[healthy].float().mean()))
    assert v["sensitivity"] == pytest.approx(float(pred[m > 0.5].float().mean()))


def test_threshold_fpr_falls_as_threshold_rises():
    maps, m, b, x = _maps()
    c = E.threshold_curve(maps, m, b, thresholds=np.linspace(0, 1.2, 25))
    assert (np.diff(c["fpr"]) <= 0).all() and (np.diff(c["sensitivity"]) <= 0).all()
    assert c["fpr"][0] > 0.5 and c["fpr"][-1] == 0
    fig, v = E.threshold_view(maps, m, 0.5, b, x, index=1, curve=c, healthy_threshold=0.7)
    assert isinstance(fig, Figure) and v["threshold"] == 0.5
    fig, vals = E.threshold_figure(maps, m, [0.2, 0.6], b, x)
    assert isinstance(fig, Figure) and vals[0]["fpr"] >= vals[1]["fpr"]


def test_threshold_widget_moves():
    maps, m, b, x = _maps()
    healthy = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(2)) * 0.6
    w = E.threshold_explorer(maps, m, b, x, healthy_maps=healthy)
    f0 = w.values["fpr"]
    w.controls["threshold"].value = w.controls["threshold"].min
    f_low = w.values["fpr"]
    w.controls["threshold"].value = w.controls["threshold"].max
    assert f_low >= f0 >= w.values["fpr"] and f_low > w.values["fpr"]
    w.controls["index"].value = 2                          # the image shown changes, the pooled values do not
    assert w.values["threshold"] == pytest.approx(w.controls["threshold"].max)


def test_threshold_shape_mismatch_is_an_error():
    maps, m, b, _ = _maps()
    with pytest.raises(ValueError, match="maps"):
        E.threshold_values(maps[:2], m, 0.5)


def test_panel_grid_shared_scale():
    a = np.zeros((4, 4)); a[0, 0] = 2.0
    fig = E.panel_grid([[dict(img=a, kind="map"), dict(img=a / 2, kind="map")]])
    ims = [ax.images[0] for ax in fig.axes if ax.images]
    assert [im.get_clim() for im in ims] == [(0.0, 2.0), (0.0, 2.0)]

"""uad_notebooks.viz: every helper returns a Figure with the expected axes; one colour scale; save_fig is careful."""
import csv

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.figure import Figure

from uad_notebooks.viz import compare_maps, plot_losses, plot_pr, plot_roc, plot_score_hist, save_fig, show_grid


@pytest.fixture(autouse=True)
def _close_all():
    yield
    plt.close("all")


def _data(n=6, size=24, seed=0):
    r = np.random.default_rng(seed)
    images = r.random((n, 1, size, size), dtype=np.float32)
    masks = np.zeros_like(images); masks[::2, 0, 8:14, 8:14] = 1
    maps = r.random((n, 1, size, size), dtype=np.float32) * np.arange(1, n + 1)[:, None, None, None]  # map i in [0, i+1)
    return images, masks, maps


def _map_images(fig):
    return [ax.images[0] for ax in fig.axes if ax.images and ax.images[0].get_cmap().name == "inferno"]


def test_show_grid_rows_and_shared_scale():
    images, masks, maps = _data()
    fig = show_grid(images, masks, maps, titles=list("abcdef"))
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3 * 6 + 1  # image, mask, map rows + one colour bar
    ims = _map_images(fig)
    assert len(ims) == 6
    assert len({im.get_clim() for im in ims}) == 1
    assert ims[0].get_clim() == pytest.approx((maps.min(), maps.max()))
    # the mask row really draws outlines (contours) on the images with a lesion
    assert sum(len(ax.collections) > 0 for ax in fig.axes[6:12]) == 3
    assert fig.axes[0].get_title() == "a"


def test_show_grid_options():
    images, masks, maps = _data()
    fig = show_grid(images, maps=maps, vmax=2.0, n=4)
    assert len(fig.axes) == 2 * 4 + 1
    clims = {im.get_clim() for im in _map_images(fig)}
    assert len(clims) == 1 and clims.pop() == pytest.approx((maps[:4].min(), 2.0))
    assert len(show_grid(images[:, 0]).axes) == 8 - 2  # (N,H,W) input, image row only, n=8 > 6 images
    with pytest.raises(ValueError, match="`maps` has shape"): show_grid(images, maps=maps[:, :, :10])
    with pytest.raises(ValueError, match="`titles`"): show_grid(images, titles=["x"])


def test_compare_maps_one_scale_across_methods():
    images, masks, maps = _data()
    fig = compare_maps(images, {"a": maps, "b": 3 * maps, "c": maps - 1}, masks, n=3)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3 * 4 + 1
    ims = _map_images(fig)
    assert len(ims) == 9 and len({im.get_clim() for im in ims}) == 1
    assert ims[0].get_clim() == pytest.approx((maps[:3].min() - 1, 3 * maps[:3].max()))
    assert [ax.get_title() for ax in fig.axes[:4]] == ["image", "a", "b", "c"]
    with pytest.raises(ValueError, match="non-empty dict"): compare_maps(images, {})
    with pytest.raises(ValueError, match=r"maps_by_method\['b'\]` has shape"): compare_maps(images, {"a": maps, "b": maps[:2]})


def test_curves_and_hist():
    r = np.random.default_rng(0)
    y = r.random(200) < 0.3
    s = r.normal(size=200) + y
    for fn in (plot_roc, plot_pr, plot_score_hist):
        fig = fn(s, y)
        assert isinstance(fig, Figure) and len(fig.axes) == 1
    fig, axs = plt.subplots(1, 2)
    assert plot_roc(s, y, ax=axs[0], label="m1") is fig
    plot_roc(s + 1, y, ax=axs[0], label="m2")
    assert len(axs[0].get_legend().get_texts()) == 2
    line = axs[0].lines[0]
    assert line.get_xdata()[0] == 0 and line.get_xdata()[-1] == 1 and line.get_ydata()[-1] == 1
    assert len(plot_score_hist(s, y, bins=20, threshold=0.3).axes[0].patches) == 40
    n_open = len(plt.get_fignums())
    with pytest.raises(ValueError, match="only class"): plot_pr(s, np.ones(200))
    assert len(plt.get_fignums()) == n_open  # no empty figure left behind
    with pytest.raises(ValueError, match="NaN"): plot_score_hist(np.r_[s[:-1], np.nan], y)


def test_plot_losses_history_and_csv(tmp_path):
    hist = [dict(step=i, epoch=0, loss=1.0 / (i + 1), val_loss=1.2 / (i + 1), lr=1e-3) for i in range(50)]
    fig = plot_losses(hist)
    assert isinstance(fig, Figure) and len(fig.axes) == 2  # losses + twin lr axis
    assert [l.get_label() for l in fig.axes[0].lines] == ["loss", "val_loss"]
    assert fig.axes[0].get_yscale() == "linear"  # 50x span: not log
    p = tmp_path / "log.csv"
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(hist[0])); w.writeheader(); w.writerows(hist)
    fig2 = plot_losses(p, keys=["loss"], log=True)
    assert len(fig2.axes[0].lines) == 1 and fig2.axes[0].get_yscale() == "log"
    np.testing.assert_allclose(fig2.axes[0].lines[0].get_ydata(), [h["loss"] for h in hist])
    with pytest.raises(ValueError, match="no such CSV"): plot_losses(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="empty"): plot_losses([])


def test_save_fig_refuses_to_overwrite(tmp_path):
    images, masks, maps = _data()
    fig = show_grid(images, masks, maps, n=2)
    p = save_fig(fig, tmp_path / "a" / "b" / "grid.png")
    assert p.exists() and p.stat().st_size > 1000
    assert not plt.fignum_exists(fig.number)  # closed after saving
    before = p.read_bytes()
    fig2 = plot_roc([0.1, 0.9, 0.4], [0, 1, 0])
    with pytest.raises(FileExistsError, match="overwrite=True"): save_fig(fig2, p)
    assert p.read_bytes() == before
    save_fig(fig2, p, overwrite=True)
    assert p.read_bytes() != before

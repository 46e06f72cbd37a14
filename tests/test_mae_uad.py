"""Method 1 (Georgescu 2023): masking, MAE, pseudo-abnormal module, the MAEUAD detector, and its repro notebook."""
import math

import pytest
import torch
import torch.nn.functional as F

from uad_notebooks import MAE, PseudoAbnormal, MAEUAD
from uad_notebooks.masking import patchify, unpatchify, random_masking, mask_to_image
from uad_notebooks.mae import mae_demo
from uad_notebooks.mae_uad import mae_uad_demo
from uad_notebooks.data import ArrayDataset


def tiny_mae(**kw):
    return MAE(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, decoder_embed_dim=16, decoder_depth=1,
               decoder_num_heads=2, **kw)


def test_api_forward_on_2x1x64x64():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 64, 64)
    mae = mae_demo().eval()
    loss, pred, mask = mae(x, 0.75)
    assert loss.shape == () and pred.shape == (2, 64, 64) and mask.shape == (2, 64)
    model = mae_uad_demo().eval()
    s, m = model.anomaly_score(x), model.anomaly_map(x)
    assert s.shape == (2,) and ((s >= 0) & (s <= 1)).all()
    assert m.shape == (2, 1, 64, 64) and torch.isfinite(m).all()
    batch = {"image": x, "label": torch.tensor([0, 1])}
    assert torch.isfinite(model.set_stage("mae").training_loss(batch))
    out = model.set_stage("classifier").training_loss(batch)
    assert torch.isfinite(out["loss"])


def test_patchify_roundtrip_and_order():
    x = torch.randn(2, 3, 16, 16)
    t = patchify(x, 4)
    assert t.shape == (2, 16, 48)
    assert torch.equal(unpatchify(t, 4, in_chans=3), x)
    assert torch.equal(t[:, 1].reshape(2, 4, 4, 3), x[:, :, :4, 4:8].permute(0, 2, 3, 1))
    with pytest.raises(ValueError, match="not divisible"): patchify(torch.zeros(1, 1, 10, 16), 4)


def test_token_order_restore():
    g = torch.Generator().manual_seed(0)
    tok = torch.randn(4, 49, 5)
    kept, mask, ids_restore = random_masking(tok, 0.6, generator=g)
    # put the kept tokens back, fill the rest with zeros, un-shuffle: visible tokens return to their own places
    full = torch.cat([kept, torch.zeros(4, 49 - kept.shape[1], 5)], 1)
    restored = torch.gather(full, 1, ids_restore[..., None].expand(-1, -1, 5))
    vis = mask == 0
    assert torch.equal(restored[vis], tok[vis])
    assert (restored[~vis] == 0).all()


@pytest.mark.parametrize("L,ratio", [(16, 0.75), (196, 0.75), (196, 0.85), (64, 0.5), (10, 0.33)])
def test_mask_ratio(L, ratio):
    _, mask, _ = random_masking(torch.zeros(3, L, 2), ratio, torch.Generator().manual_seed(1))
    keep = int(L * (1 - ratio))
    assert (mask.sum(1) == L - keep).all() and set(mask.unique().tolist()) <= {0.0, 1.0}


def test_mask_ratio_bad_values():
    with pytest.raises(ValueError, match="mask_ratio"): random_masking(torch.zeros(1, 16, 2), 1.0)
    with pytest.raises(ValueError, match="mask_ratio"): random_masking(torch.zeros(1, 16, 2), -0.1)


def test_pseudo_abnormal_changes_only_inside_its_rectangles():
    x = torch.rand(8, 1, 224, 224) + 0.1
    y, boxes = PseudoAbnormal()(x, torch.Generator().manual_seed(3), return_boxes=True)
    for b in range(8):
        inside = torch.zeros(224, 224, dtype=torch.bool)
        assert 1 <= len(boxes[b]) <= 9
        for top, left, h, w, rho in boxes[b]:
            assert 10 <= h <= 39 and 10 <= w <= 39 and 0 <= rho < 1
            inside[top:top + h, left:left + w] = True
        assert torch.equal(y[b, 0][~inside], x[b, 0][~inside])
        assert (y[b, 0][inside] < x[b, 0][inside]).all()


def test_pseudo_abnormal_seeded():
    x = torch.rand(2, 1, 64, 64)
    pa = PseudoAbnormal()
    assert torch.equal(pa(x, torch.Generator().manual_seed(0)), pa(x, torch.Generator().manual_seed(0)))


def test_classifier_head_class_is_abnormal():
    "Class 1 is abnormal: the score is P(class 1), and training on label 1 raises the score of those maps."
    torch.manual_seed(0)
    model = MAEUAD(32, 8, 1, mae=tiny_mae(), augment=False).set_stage("classifier")
    with torch.no_grad(): model.classifier.head.bias.copy_(torch.tensor([-4., 4.]))
    x = torch.rand(3, 1, 32, 32)
    assert (model.anomaly_score(x) > 0.99).all()
    # a few steps on maps where label 1 = bright squares; P(class 1) must rise for them
    with torch.no_grad(): model.classifier.head.bias.zero_()
    d0 = torch.rand(16, 1, 32, 32) * 0.1
    d1 = d0.clone(); d1[:, :, 8:16, 8:16] += 1.0
    maps, labels = torch.cat([d0, d1]), torch.tensor([0] * 16 + [1] * 16)
    opt = torch.optim.AdamW([p for g in model.param_groups(0.0) for p in g["params"]], lr=1e-3)
    model.train()
    for _ in range(30):
        loss = model.training_loss({"image": maps, "label": labels})["loss"]
        opt.zero_grad(); loss.backward(); opt.step()
    model.eval()
    with torch.no_grad(): p = model.classifier(maps).softmax(1)[:, 1]
    assert p[16:].mean() > 0.8 and p[:16].mean() < 0.2


def test_param_groups_follow_stage():
    model = MAEUAD(32, 8, 1, mae=tiny_mae())
    mae_groups = model.set_stage("mae").param_groups(0.05)
    assert sum(len(g["params"]) for g in mae_groups) == len(list(model.mae.parameters()))
    clf_groups = model.set_stage("classifier").param_groups(0.05)
    assert sum(len(g["params"]) for g in clf_groups) == len(list(model.classifier.parameters()))
    scales = sorted({g["lr_scale"] for g in clf_groups})
    assert scales[-1] == 1.0 and math.isclose(scales[0], 0.75 ** 3)      # depth 2: ids 0..3
    assert not any(p.requires_grad for p in model.mae.parameters())


def test_build_classifier_data_twice_per_normal_image():
    model = MAEUAD(32, 8, 1, mae=tiny_mae())
    imgs = torch.rand(5, 1, 32, 32); imgs[4] = 0
    ds = ArrayDataset(imgs, torch.tensor([0, 1, 0, 0, 0]))
    cd = model.build_classifier_data(ds, batch_size=2, progress=False)
    assert len(cd) == 4 + 3 and int(cd.labels.sum()) == 3      # the all-zero image gives no positive


# Regression pins: values this code computed on CPU in float32 (not paper numbers); a change means the maths changed.
PIN_LOSS, PIN_SCORE, PIN_MAP_MEAN = 0.65500873, [0.00385564, 0.00555484], 0.50350887  # masks keyed by image since 2026-12


def test_seeded_pinned_numbers():
    "Regression pins (computed by this code on CPU, float32): loss, score and map of a seeded tiny model."
    torch.manual_seed(0)
    model = MAEUAD(32, 8, 1, mae=tiny_mae()).set_stage("classifier").eval()
    with torch.no_grad(): model.classifier.head.weight.normal_(0, 1, generator=torch.Generator().manual_seed(1))
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    loss, _, _ = model.mae(x, 0.75, generator=torch.Generator().manual_seed(0))
    s = model.anomaly_score(x)
    m = model.anomaly_map(x)
    assert torch.allclose(s, model.anomaly_score(x.clone()))                     # reproducible masks
    torch.testing.assert_close(loss, torch.tensor(PIN_LOSS), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s, torch.tensor(PIN_SCORE), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(m.mean(), torch.tensor(PIN_MAP_MEAN), atol=1e-4, rtol=1e-4)


@pytest.mark.notebook
def test_repro_mae_uad_smoke(run_repro):
    m, out = run_repro("repro_mae_uad")
    assert m["dataset"] == "demo" and m["smoke"] is True and m["preset"] == "demo"
    for k in ("auroc", "ap", "f1_max"):
        assert 0 <= m["image"][k] <= 1, k
        lo, hi = m["image"][f"{k}_ci"]
        assert lo <= m["image"][k] <= hi, k
    assert set(m["settings"]) == {"paper_protocol", "healthy_protocol", "last_epoch", "ablation_recon", "ablation_k1_test"}
    for name, r in m["settings"].items(): assert 0 <= r["image"]["auroc"] <= 1 and "auroc_ci" in r["image"], name
    assert m["selection"]["chosen"]["real_val"]["step"] is not None
    assert m["train"]["n_classifier_maps"] > 0 and m["paper"] is None
    p = m["provenance"]
    assert p["params"]["smoke"] is True and p["seed"] == 0 and p["pretrained_weights"] == "none"
    for f in ("reconstructions.png", "pseudo_abnormal.png", "roc.png", "difference_maps.png", "selection.png",
              "loss_mae.png", "loss_classifier.png", "scores_paper_protocol.csv", "checkpoints/mae/last.pt",
              "checkpoints/classifier/last.pt"):
        assert (out / f).exists(), f

"""Method 2 (MemMC-MAE): the memory attention, the multi-level cross-attention, the model's API, and the repro notebook."""
import math

import pytest
import torch

from uad_notebooks.mae import Attention, Block
from uad_notebooks.memory import MemoryAttention, CrossAttention, MultiLevelCrossAttention, memory_mass
from uad_notebooks.memmc_mae import MemMCMAE, MemoryBlock, memmc_mae_demo, memmc_mae_paper, masked_mse, top_mean

TINY = dict(img_size=32, patch_size=8, embed_dim=32, depth=3, num_heads=4, decoder_embed_dim=32, decoder_depth=2,
            decoder_num_heads=4, n_mem=4)


def test_public_api_forward_2x1x64x64():
    from uad_notebooks import MemMCMAE as M
    torch.manual_seed(0)
    model = M(img_size=64, patch_size=8, in_chans=1, n_mem=8, mask_ratio=0.75).eval()
    x = torch.rand(2, 1, 64, 64)
    amap, score = model.anomaly_map(x), model.anomaly_score(x)
    assert amap.shape == (2, 1, 64, 64) and score.shape == (2,)
    assert torch.isfinite(amap).all() and (amap >= 0).all()
    loss = model.training_loss({"image": x})
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_memory_changes_output_and_zero_memory_is_plain_attention():
    torch.manual_seed(0)
    x = torch.randn(2, 10, 32)
    plain = Attention(32, num_heads=4).eval()
    mem = MemoryAttention(32, num_heads=4, n_mem=6).eval()
    missing, unexpected = mem.load_state_dict(plain.state_dict(), strict=False)
    assert set(missing) == {"m_k", "m_v"} and not unexpected
    assert (mem(x) - plain(x)).abs().max() > 1e-3
    mem0 = MemoryAttention(32, num_heads=4, n_mem=0).eval()
    mem0.load_state_dict(plain.state_dict())
    torch.testing.assert_close(mem0(x), plain(x), atol=1e-5, rtol=1e-5)


def test_memory_attention_matches_explicit_softmax_and_mass():
    torch.manual_seed(0)
    att = MemoryAttention(16, num_heads=2, n_mem=3).eval()
    x = torch.randn(1, 5, 16)
    y, w = att(x, return_attn=True)
    torch.testing.assert_close(att(x), y, atol=1e-5, rtol=1e-5)
    # explicit: scaled memory (sqrt(d_k) M_k, sqrt(m) M_v) appended to keys and values of each head
    q, k, v = att.qkv(x).reshape(1, 5, 3, 2, 8).permute(2, 0, 3, 1, 4)
    mk = (math.sqrt(8) * att.m_k).reshape(1, 3, 2, 8).transpose(1, 2)
    mv = (math.sqrt(3) * att.m_v).reshape(1, 3, 2, 8).transpose(1, 2)
    ww = (q @ torch.cat([k, mk], 2).transpose(-2, -1) / math.sqrt(8)).softmax(-1)
    torch.testing.assert_close(ww, w, atol=1e-6, rtol=1e-5)
    o = att.proj((ww @ torch.cat([v, mv], 2)).transpose(1, 2).reshape(1, 5, 16))
    torch.testing.assert_close(o, y, atol=1e-5, rtol=1e-5)
    mass = memory_mass(w, 3)
    torch.testing.assert_close(mass, w[..., 5:].sum(-1).mean(1))
    assert ((mass > 0) & (mass < 1)).all()


def test_use_memory_false_is_plain_block():
    torch.manual_seed(0)
    model = MemMCMAE(**TINY, use_memory=False)
    assert model.n_mem == 0 and not any(n.endswith(("m_k", "m_v")) for n, _ in model.named_parameters())
    blk, plain = model.blocks[0].eval(), Block(32, 4).eval()
    blk.load_state_dict(plain.state_dict())
    x = torch.randn(2, 4, 32)
    torch.testing.assert_close(blk(x), plain(x), atol=1e-5, rtol=1e-5)
    assert isinstance(MemoryBlock(32, 4, n_mem=2).attn, MemoryAttention)


def test_gates_in_unit_interval_and_combination():
    torch.manual_seed(0)
    op = MultiLevelCrossAttention(16, num_heads=4, n_levels=4).eval()
    y, levels = torch.randn(2, 7, 16), [torch.randn(2, 3, 16) for _ in range(4)]
    out, a = op(y, levels, return_gates=True)
    assert a.shape == (2, 4, 7, 16) and ((a > 0) & (a < 1)).all()
    cs = torch.stack([op.cross(y, x) for x in levels], 1)
    torch.testing.assert_close(out, (a * cs).sum(1) / 2.0, atol=1e-6, rtol=1e-5)  # / sqrt(N), N = 4
    with pytest.raises(ValueError, match="expected 4 encoder levels"): op(y, levels[:3])
    ca = CrossAttention(16, 4)
    assert ca(y, levels[0]).shape == (2, 7, 16)


def test_model_levels_gates_and_mask_ratio():
    torch.manual_seed(0)
    x = torch.rand(3, 1, 32, 32)
    full, last = MemMCMAE(**TINY).eval(), MemMCMAE(**TINY, multi_level=False).eval()
    assert len(full.forward_encoder(x)[0]) == 3 and len(last.forward_encoder(x)[0]) == 1
    out = full(x)
    assert out["pred"].shape == (3, 16, 64) and out["gates"].shape == (3, 2, 3)
    assert ((out["gates"] > 0) & (out["gates"] < 1)).all()
    for r in (0.5, 0.75, 0.9):
        mask = full(x, mask_ratio=r)["mask"]
        assert mask.shape == (3, 16) and (mask.sum(1) == 16 - int(16 * (1 - r))).all()
        assert set(mask.unique().tolist()) <= {0.0, 1.0}


def test_scores_seeded_and_batch_independent():
    torch.manual_seed(0)
    model = MemMCMAE(**TINY).eval()
    x = torch.rand(4, 1, 32, 32)
    s = model.anomaly_score(x)
    torch.testing.assert_close(model.anomaly_score(x), s)
    torch.testing.assert_close(model.anomaly_score(x[2:3]), s[2:3], atol=1e-5, rtol=1e-5)
    model.eval_seed = 1
    assert not torch.allclose(model.anomaly_score(x), s)


def test_pinned_numbers():
    torch.manual_seed(0)
    model = MemMCMAE(**TINY).eval()
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(1)
    # pins re-computed when the memory took the template's initialisation (std 1/d_k and 1/m)
    assert model.training_loss({"image": x}).item() == pytest.approx(0.8355348, abs=1e-4)
    torch.testing.assert_close(model.anomaly_score(x), torch.tensor([0.8275604, 0.8119823]), atol=1e-4, rtol=0)


def test_masked_mse_only_counts_hidden_patches():
    pred, target = torch.tensor([[[1.], [3.], [5.]]]), torch.zeros(1, 3, 1)
    assert masked_mse(pred, target, torch.tensor([[0., 1., 1.]])).item() == pytest.approx(17.0)


def test_top_mean_score():
    maps = torch.tensor([[[[0., 1.], [2., 9.]]], [[[4., 4.], [4., 4.]]]])
    torch.testing.assert_close(top_mean(maps, 1.0), torch.tensor([3., 4.]))
    torch.testing.assert_close(top_mean(maps, 0.25), torch.tensor([9., 4.]))
    torch.manual_seed(0)
    model = MemMCMAE(**TINY, score_top=0.1).eval()
    x = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(model.anomaly_score(x), top_mean(model.anomaly_map(x), 0.1))
    with pytest.raises(ValueError, match="score_top"): MemMCMAE(**TINY, score_top=0.0)


def test_training_reduces_loss():
    torch.manual_seed(0)
    model = MemMCMAE(**TINY)
    x = torch.zeros(8, 1, 32, 32); x[:, :, 8:24, 8:24] = 1.0  # one fixed pattern: easy to learn
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    first = None
    for _ in range(30):
        loss = model.training_loss({"image": x}); opt.zero_grad(); loss.backward(); opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first


def test_presets_and_bad_input():
    demo = memmc_mae_demo()
    assert demo.img_size == 64 and demo.patch_size == 8 and demo.n_mem > 0
    assert memmc_mae_demo(use_memory=False).n_mem == 0
    with pytest.raises(ValueError, match="x must be"): demo.anomaly_map(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="divisible"): MemMCMAE(img_size=60, patch_size=8)
    with pytest.raises(ValueError, match="mask_ratio"): MemMCMAE(mask_ratio=1.0)
    with pytest.raises(ValueError, match="n_mem"): MemoryAttention(16, 4, n_mem=-2)


@pytest.mark.slow
def test_paper_preset_builds():
    model = memmc_mae_paper()
    assert model.img_size == 224 and model.patch_size == 16 and model.blocks[0].attn.n_mem == 40
    assert model.anomaly_score(torch.rand(1, 1, 224, 224)).shape == (1,)


@pytest.mark.notebook
def test_repro_memmc_mae_smoke(run_repro):
    metrics, out_dir = run_repro("repro_memmc_mae", seed=0)
    assert metrics["dataset"] == "demo"
    for name in ("full", "memory off", "last level only"):
        img = metrics["ablation"][name]["image"]
        assert 0.0 <= img["auroc"] <= 1.0 and len(img["auroc_ci"]) == 2
    assert 0.0 <= metrics["metrics"]["image"]["auroc"] <= 1.0
    assert metrics["provenance"]["seed"] == 0
    assert (out_dir / "ablation.md").exists() and list(out_dir.glob("*.png"))

"""Tests of the demo dataset (`uad_notebooks.demo`): public API, determinism, splits, cache, offline anatomy, bad input."""
import socket, threading, time
from dataclasses import fields

import numpy as np
import pytest
import torch

from uad_notebooks import demo
from uad_notebooks.demo import (DemoConfig, SIZES, SPLITS, build_demo_split, demo_arrays, demo_cache_path,
                                demo_dataset, demo_params, make_subject, min_lesion_px)
from uad_notebooks.data import load_dataset

ITEM_KEYS = {"image", "label", "mask", "brain", "has_mask", "subject", "index"}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    "A private cache folder for the test (never the user's ~/.cache, never the repository)."
    monkeypatch.setenv("UAD_NOTEBOOKS_CACHE", str(tmp_path))
    return tmp_path


def test_items_follow_the_contract(cache):
    ds = demo_dataset("val", size="small", progress=False)
    assert len(ds) == SIZES["small"]["val"] * DemoConfig().slices_per_subject
    it = ds[3]
    assert set(it) == ITEM_KEYS
    assert it["image"].shape == it["mask"].shape == it["brain"].shape == (1, 64, 64)
    assert it["image"].dtype == torch.float32 and it["label"].dtype == torch.int64 and bool(it["has_mask"])
    assert isinstance(it["subject"], str) and int(it["index"]) == 3
    x, m, b, y = ds.images, ds.masks, ds.brains, ds.labels
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    assert float((x * (1 - b)).abs().max()) == 0                       # background is exactly 0
    assert not bool((m * (1 - b)).any())                                # lesions only inside the brain
    assert torch.equal(y, m.flatten(1).any(1).long())                  # label == any lesion pixel
    assert (m.flatten(1).sum(1)[y == 1] >= min_lesion_px(64)).all()    # ... of at least the stated area
    assert 0 < int(y.sum()) < len(y)
    row = ds.manifest()[0]
    assert {"slice", "contrast", "lesion"} <= set(row) and row["contrast"] == "flair"


def test_load_dataset_calls_demo(cache):
    ds = load_dataset("demo", "train", size="small", progress=False)
    assert int(ds.labels.sum()) == 0 and len(set(ds.subjects)) == SIZES["small"]["train"]


def test_splits_are_by_subject(cache):
    subj = {sp: set(demo_dataset(sp, size="small", progress=False).subjects) for sp in SPLITS}
    assert not (subj["train"] & subj["val"]) and not (subj["train"] & subj["test"]) and not (subj["val"] & subj["test"])
    test = demo_dataset("test", size="small", progress=False)
    abn = {s for s, l in zip(test.subjects, test.labels.tolist()) if l}
    assert len(abn) == SIZES["small"]["test"] // 2                    # half the subjects carry a lesion
    for s in abn:                                                      # and those have normal slices too
        assert 0 in [l for t, l in zip(test.subjects, test.labels.tolist()) if t == s]


def test_deterministic_from_seed():
    a, b = build_demo_split("test", size="small", seed=5), build_demo_split("test", size="small", seed=5)
    for k in a: np.testing.assert_array_equal(a[k], b[k])
    c = build_demo_split("test", size="small", seed=6)
    assert not np.array_equal(a["images"], c["images"])


def test_other_sizes_and_contrasts():
    for n in (32, 100):
        a = build_demo_split("train", img_size=n, size="small")
        assert a["images"].shape[1:] == (n, n) and a["images"].dtype == np.float32
    assert min_lesion_px(64) == 4 and min_lesion_px(128) == 16
    mixed = build_demo_split("val", size="small", contrast="mixed")
    assert len(set(mixed["contrast"])) > 1


def test_masks_are_exact():
    for s in range(4):
        sub = make_subject(np.random.default_rng(s), 64, n_lesions=1)
        changed = sub["image"] != sub["healthy"]
        assert changed.any() and not (changed & ~sub["mask"]).any()    # nothing outside the mask changed
        assert (changed[sub["mask"]]).mean() > 0.95                    # nearly every mask pixel changed (rest: clipped at 1)


def test_second_call_loads_from_cache(cache, monkeypatch):
    ds1 = demo_dataset("val", size="small", progress=False)
    path = demo_cache_path("val", size="small")
    assert path.exists() and path.parent == cache / "demo" and not list(path.parent.glob("*.tmp"))
    monkeypatch.setattr(demo, "build_demo_split", lambda *a, **k: pytest.fail("rebuilt instead of loading"))
    t0 = time.time()
    ds2 = demo_dataset("val", size="small")
    assert time.time() - t0 < 1.0
    assert torch.equal(ds1.images, ds2.images) and ds1.subjects == ds2.subjects


def test_cache_false_writes_nothing(cache):
    demo_dataset("val", size="small", cache=False, progress=False)
    assert not list(cache.glob("demo/demo-*.npz"))


def test_data_dir_is_an_alternative_cache_folder(cache, tmp_path_factory):
    other = tmp_path_factory.mktemp("democache")
    demo_dataset("val", size="small", data_dir=other, progress=False)
    assert len(list(other.glob("demo-v*-val-small-*.npz"))) == 1


def test_cache_key_covers_every_parameter(cache):
    p = demo_params("val", 64, 0, "small")
    assert {f.name for f in fields(DemoConfig)} <= set(p) and p["version"] == demo.DEMO_VERSION
    base = demo_cache_path("val", 64, 0, "small")
    for kw in (dict(split="test"), dict(img_size=96), dict(seed=1), dict(size="default"), dict(contrast="t2")):
        assert demo_cache_path(**{**dict(split="val", img_size=64, seed=0, size="small"), **kw}) != base
    assert demo_cache_path("val", 64, 0, "small") == base


def test_cache_key_changes_with_version(cache, monkeypatch):
    base = demo_cache_path("val", 64, 0, "small")
    monkeypatch.setattr(demo, "DEMO_VERSION", demo.DEMO_VERSION + 1)
    assert demo_cache_path("val", 64, 0, "small") != base


def test_corrupt_or_foreign_cache_is_rebuilt(cache):
    a = demo_arrays("val", size="small", progress=False)
    path = demo_cache_path("val", size="small")
    path.write_bytes(b"\x00" * 100)
    with pytest.warns(UserWarning, match="unreadable"):
        b = demo_arrays("val", size="small", progress=False)
    np.testing.assert_array_equal(a["images"], b["images"])
    np.savez_compressed(path, images=a["images"], params=np.array("{}"))  # a file written with other parameters
    with pytest.warns(UserWarning, match="other parameters"):
        demo_arrays("val", size="small", progress=False)


def test_concurrent_writers_leave_a_whole_file(tmp_path):
    path = tmp_path / "x.npz"
    big = [dict(a=np.full((200, 64, 64), i, np.float32)) for i in range(4)]
    ts = [threading.Thread(target=demo._save_atomic, args=(path, d)) for d in big for _ in range(2)]
    for t in ts: t.start()
    for t in ts: t.join()
    with np.load(path) as z: a = z["a"]
    assert a.shape == (200, 64, 64) and len(np.unique(a)) == 1         # one writer's complete array
    assert [p.name for p in tmp_path.iterdir()] == ["x.npz"]           # no temporary files left


@pytest.mark.parametrize("kw,name", [(dict(split="training"), "split"), (dict(img_size=16), "img_size"),
                                     (dict(img_size=512), "img_size"), (dict(img_size="64"), "img_size"),
                                     (dict(seed=-1), "seed"), (dict(seed=1.5), "seed"), (dict(seed=True), "seed"),
                                     (dict(size="huge"), "size"), (dict(contrast="dwi"), "contrast")])
def test_bad_inputs(cache, kw, name):
    with pytest.raises(ValueError, match=name):
        demo_dataset(**{"split": "val", "size": "small", **kw})


def test_anatomy_loads_offline(cache, monkeypatch):
    "The MNI152 maps come from files inside the nilearn package: no socket is ever opened."
    def no_network(*a, **k): raise OSError("network access attempted")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    demo.mni152_anatomy.cache_clear()
    try:
        anat = demo.mni152_anatomy()                                   # empty cache: read through nilearn
        assert anat["t1"].shape == (99, 117, 95) and anat["brain"].sum() > 2e5
        assert len(list((cache / "demo").glob("mni152-2mm-*.npz"))) == 1
        demo.mni152_anatomy.cache_clear()
        again = demo.mni152_anatomy()                                  # now from the cache file: identical
        for k in ("t1", "gm", "wm", "csf", "brain"): np.testing.assert_array_equal(anat[k], again[k])
    finally:
        demo.mni152_anatomy.cache_clear()


def test_global_intensity_does_not_solve_the_task(cache):
    "On the default test split, slice mean and brain 99th percentile are weak detectors (image AUROC)."
    from sklearn.metrics import roc_auc_score
    d = demo_arrays("test", size="default", progress=False)
    x, b, y = d["images"], d["brains"], d["labels"]
    auc_mean = roc_auc_score(y, x.mean((1, 2)))
    auc_p99 = roc_auc_score(y, [np.percentile(xi[bi], 99) for xi, bi in zip(x, b)])
    assert 0.35 < auc_mean < 0.65 and 0.55 < auc_p99 < 0.9, (auc_mean, auc_p99)

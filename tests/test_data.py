"""Data loaders on small files written in the real formats, and the clear errors bad inputs get."""
import csv, json

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from uad_notebooks.data import (ArrayDataset, DataError, check_test_set, intensity_record, list_datasets, load_dataset,
                                manifest_hash, read_array, split_by_subject)


def _nifti_folder(d, n=5, shape=(24, 24, 8)):
    rng = np.random.default_rng(0)
    for i in range(n):
        v = np.zeros(shape, np.float32); v[3:21, 3:21, 1:7] = rng.random((18, 18, 6)) + 0.2
        s = np.zeros(shape, np.float32); s[8:12, 8:12, 3:5] = 1
        nib.save(nib.Nifti1Image(v, np.eye(4)), d / f"sub{i}.nii.gz")
        nib.save(nib.Nifti1Image(s, np.eye(4)), d / f"sub{i}_seg.nii.gz")
    return d


def test_nifti_folder_splits_by_subject(tmp_path):
    d = _nifti_folder(tmp_path)
    parts = {s: load_dataset("nifti", s, data_dir=d, img_size=16) for s in ("train", "val", "test")}
    assert int(parts["train"].labels.sum()) == 0  # train keeps only normal slices
    subs = [set(p.subjects) for p in parts.values()]
    assert subs[0].isdisjoint(subs[1]) and subs[0].isdisjoint(subs[2]) and subs[1].isdisjoint(subs[2])
    te = parts["test"]
    assert te.has_masks and te.images.shape[1:] == (1, 16, 16)
    assert all((te.masks[i].sum() > 0) == bool(te.labels[i]) for i in range(len(te)))


def test_corrupt_nifti_names_the_file(tmp_path):
    d = _nifti_folder(tmp_path)
    good = (d / "sub2.nii.gz").read_bytes()
    (d / "sub2.nii.gz").write_bytes(good[: len(good) // 3])  # truncated download
    with pytest.raises(DataError, match=r"sub2\.nii\.gz: not a readable NIfTI"):
        for s in ("train", "val", "test"): load_dataset("nifti", s, data_dir=d)


def test_mask_shape_mismatch_is_an_error(tmp_path):
    d = _nifti_folder(tmp_path)
    nib.save(nib.Nifti1Image(np.zeros((24, 20, 8), np.float32), np.eye(4)), d / "sub1_seg.nii.gz")
    with pytest.raises(DataError, match=r"mask shape \(24, 20, 8\) differs from the image shape \(24, 24, 8\)"):
        for s in ("train", "val", "test"): load_dataset("nifti", s, data_dir=d)
    with pytest.raises(DataError, match="masks shape"):
        ArrayDataset(torch.rand(3, 8, 8), [0, 0, 1], masks=torch.zeros(3, 1, 8, 7))


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(DataError, match="no NIfTI volumes"): load_dataset("nifti", "train", data_dir=tmp_path)
    with pytest.raises(DataError, match="does not exist"): load_dataset("nifti", "train", data_dir=tmp_path / "nope")
    with pytest.raises(ValueError, match="data_dir is required"): load_dataset("brats2020", "test")
    with pytest.raises(DataError, match="manifest.csv not found"): load_dataset("brats2020", "test", data_dir=tmp_path)
    with pytest.raises(DataError, match="empty"): ArrayDataset(torch.zeros(0, 4, 4), [])


def test_one_class_test_set_is_an_error():
    ds = ArrayDataset(torch.rand(4, 8, 8), [0, 0, 0, 0])
    with pytest.raises(DataError, match="needs normal and abnormal items.*4 normal and 0 abnormal"): check_test_set(ds)
    from uad_notebooks.evaluate import evaluate
    from uad_notebooks.baseline_ae import ConvAE
    with pytest.raises(DataError, match="0 abnormal"): evaluate(ConvAE(8), ds, progress=False)


def test_png_folder_and_dicom(tmp_path):
    from pydicom.data import get_testdata_file
    import shutil
    for i in range(4): Image.fromarray((np.random.rand(12, 12) * 255).astype(np.uint8)).save(tmp_path / f"f{i}.png")
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "ct.dcm")
    (tmp_path / "labels.csv").write_text("file,label,split\nf0.png,0,train\nf1.png,0,test\nf2.png,1,test\nct.dcm,1,test\nf3.png,0,val\n")
    te = load_dataset("folder", "test", data_dir=tmp_path, img_size=8)
    assert te.labels.tolist() == [0, 1, 1] and te.images.shape == (3, 1, 8, 8)
    assert 0 <= float(te.images.min()) and float(te.images.max()) <= 1
    assert read_array(tmp_path / "ct.dcm").min() < -500  # Hounsfield units after the rescale intercept


def test_npz_medmnist_style(tmp_path):
    z = {f"{s}_images": (np.random.rand(6, 28, 28) * 255).astype(np.uint8) for s in ("train", "val", "test")}
    z.update({f"{s}_labels": np.array([[0], [1], [0], [1], [0], [1]], np.uint8) for s in ("train", "val", "test")})
    np.savez(tmp_path / "pneumoniamnist.npz", **z)
    tr = load_dataset("npz", "train", data_dir=tmp_path, img_size=28)
    te = load_dataset("npz", "test", data_dir=tmp_path, img_size=28)
    assert len(tr) == 3 and int(tr.labels.sum()) == 0 and te.labels.tolist() == [0, 1, 0, 1, 0, 1]


def test_real_pneumoniamnist_if_present(shared_data):
    f = shared_data / "pneumoniamnist-28" / "pneumoniamnist_trainnormals-reduced_varun19424.npz"
    te = load_dataset("npz", "test", data_dir=f, img_size=28)
    assert len(te) == 624 and int(te.labels.sum()) == 390  # 234 normal + 390 pneumonia (shared/data README)


def test_split_by_subject_is_reproducible_and_complete():
    a = split_by_subject([f"s{i}" for i in range(20)], (0.5, 0.25, 0.25), seed=3)
    assert a == split_by_subject([f"s{i}" for i in range(20)], (0.5, 0.25, 0.25), seed=3)
    assert sorted(a.values()).count("train") == 10
    with pytest.raises(ValueError, match="fractions"): split_by_subject(["a"], (0.5, 0.5))


def test_registry_knows_the_papers_datasets():
    names = set(list_datasets())
    assert {"demo", "brats2020", "brats2021", "ixi", "mslub", "luna16", "rsna_pneumonia", "hyper_kvasir", "covid_cxr",
            "nih_cxr14", "camelyon16", "nifti", "folder", "dicom", "npz"} <= names
    with pytest.raises(ValueError, match="Did you mean 'demo'"): load_dataset("dem", "train")


def test_manifest_hash_changes_with_pixels():
    a = ArrayDataset(torch.zeros(2, 4, 4), [0, 1]); b = ArrayDataset(torch.zeros(2, 4, 4), [0, 1])
    assert manifest_hash(a) == manifest_hash(b)
    b.images[0, 0, 0, 0] = 1
    assert manifest_hash(a) != manifest_hash(b)


def test_manifest_colour_images_and_healthy_ground_truth(tmp_path):
    """in_chans=3 keeps RGB; a normal row without a mask file has real zero ground truth when the set has masks."""
    rgb = (np.random.rand(10, 12, 3) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png"); Image.fromarray(rgb).save(tmp_path / "b.png")
    m = np.zeros((10, 12), np.uint8); m[2:5, 2:5] = 255; Image.fromarray(m).save(tmp_path / "b_mask.png")
    (tmp_path / "manifest.csv").write_text("split,subject,label,image,mask,brain\ntest,p1,0,a.png,,\ntest,p2,1,b.png,b_mask.png,\n")
    (tmp_path / "provenance.json").write_text(json.dumps(dict(intensity=intensity_record("hyper_kvasir"))))
    te = load_dataset("hyper_kvasir", "test", data_dir=tmp_path, img_size=8, in_chans=3)
    assert te.images.shape == (2, 3, 8, 8) and te.masks.shape == (2, 1, 8, 8)
    assert te.has_mask.tolist() == [True, True] and float(te.masks[0].sum()) == 0 and float(te.masks[1].sum()) > 0
    grey = load_dataset("hyper_kvasir", "test", data_dir=tmp_path, img_size=8)
    assert grey.images.shape == (2, 1, 8, 8)


def test_manifest_intensity_contract_is_applied_per_channel_and_required(tmp_path):
    """normalize='auto' applies the recorded x * scale + offset to every image and channel alike (DPA's [-1, 1] for an
    RGB patch: no joint min-max across channels); a folder without the record is a DataError saying what to do, and
    an explicit normalize= is applied and recorded as not the contract."""
    rgb = np.zeros((4, 4, 3), np.uint8); rgb[..., 0] = 255; rgb[..., 1] = 51; rgb[:2, :, 2] = 102
    Image.fromarray(rgb).save(tmp_path / "p.png")
    (tmp_path / "manifest.csv").write_text("split,subject,label,image,mask,brain\ntest,s,0,p.png,,\ntest,t,1,p.png,,\n")
    with pytest.raises(DataError, match="provenance.json not found.*normalize="):
        load_dataset("camelyon16", "test", data_dir=tmp_path, in_chans=3)
    (tmp_path / "provenance.json").write_text(json.dumps(dict(dataset="camelyon16", steps=[])))
    with pytest.raises(DataError, match=r"records no 'intensity'.*camelyon16\.py prepare"):
        load_dataset("camelyon16", "test", data_dir=tmp_path, in_chans=3)
    (tmp_path / "provenance.json").write_text(json.dumps(dict(intensity=intensity_record("camelyon16"))))
    te = load_dataset("camelyon16", "test", data_dir=tmp_path, img_size=4, in_chans=3)
    want = torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float64) * 2 / 255 - 1).float()
    assert torch.allclose(te.images[0], want, atol=1e-6) and te.intensity["contract_applied"]
    assert te.intensity["name"] == "uint8_to_pm1" and "ninatu/anomaly_detection" in te.intensity["source"]
    grey = load_dataset("camelyon16", "test", data_dir=tmp_path, img_size=4)            # luminance, same map
    assert float(grey.images.min()) >= -1 and float(grey.images.max()) <= 1
    none = load_dataset("camelyon16", "test", data_dir=tmp_path, img_size=4, in_chans=3, normalize=None)
    assert torch.equal(none.images[0], torch.from_numpy(rgb.transpose(2, 0, 1).astype(np.float32)))
    assert not none.intensity["contract_applied"] and "was not applied" in none.intensity["applied"]
    with pytest.raises(DataError, match="2 values for 3 channel"):
        load_dataset("camelyon16", "test", data_dir=tmp_path, in_chans=3, normalize=dict(scale=[1, 2], offset=0))

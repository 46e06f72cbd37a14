"""The MAE-UAD and MemMC-MAE reproductions on the real-data layout (issue 14, section 2): for every (notebook, dataset)
pair the papers use, a tiny fabricated copy of the raw data goes through `data_scripts/<name>.py prepare` and `check`,
then the repro notebook runs under papermill in smoke mode on the prepared folder. Each test checks that the metrics
are finite and that `metrics.json` records the protocol the paper uses (the card rows), with the intensity contract
the loader applied. Each takes well under 30 s on two idle cores (most of it the kernel start)."""
import hashlib, json, math

import numpy as np
import pytest

from test_data_scripts import RNG, fab_brats2020, jpeg, prepare_and_check, run, write_csv, write_dicom, write_mhd

pytestmark = pytest.mark.notebook


def finite(x) -> bool: return x is not None and math.isfinite(x)


def card(m) -> dict:
    "The protocol rows of a metrics.json by point; every row has the card's keys and a note where it does not match."
    rows = {r["point"]: r for r in m["protocol"]}
    for r in rows.values():
        assert set(r) >= {"point", "paper", "source", "ours", "match", "note"}, r
        assert r["match"] is True or r["note"], r
    return rows


def check_intensity(m, name, scale, offset):
    i = m["intensity"]
    assert i["name"] == name and i["scale"] == pytest.approx(scale) and i["offset"] == pytest.approx(offset), i
    assert i["contract_applied"] is True, i


# --------------------------------------------------------------------------------------------------- fabricated raw data
def fab_luna16(raw):
    "Three scans (MetaImage, int16 HU) with one nodule candidate (class 1) and three others each; Georgescu's five lists."
    uids = [f"1.3.6.1.4.1.14519.5.2.1.6279.6001.{i}" for i in (111, 222, 333)]
    cands = []
    for k, uid in enumerate(uids):
        vol = np.full((10, 40, 40), -1000, np.int16); vol[4:7, 15:25, 15:25] = 40
        origin, spacing = (-100.0, -120.0, -300.0 + k), (0.7, 0.7, 2.5)
        write_mhd(raw / f"subset{k}" / f"{uid}.mhd", vol, origin, spacing)
        for j in range(4):
            vx, vy, vz = (20, 20, 5) if j == 0 else (8 + j, 30, 2)
            cands.append([uid, origin[0] + vx * spacing[0], origin[1] + vy * spacing[1], origin[2] + vz * spacing[2], int(j == 0)])
    write_csv(raw / "CSVFILES" / "candidates.csv", ["seriesuid", "coordX", "coordY", "coordZ", "class"], cands)
    sp = raw / "splits"; sp.mkdir()
    w = lambda f, rows: (sp / f).write_text("".join(f"{r}.npy\n" for r in rows))
    w("normal_training_samples.txt", [1, 2, 5, 6]); w("normal_val_samples.txt", [3, 11]); w("abnormal_val_samples.txt", [0])
    w("normal_test_samples.txt", [9, 10, 7]); w("abnormal_test_samples.txt", [4, 8])


def fab_hyper_kvasir(raw):
    "Colour JPEG frames: 12 normal landmarks, 6 polyps with masks."
    L = raw / "labeled-images"
    for i in range(12):
        f = ["cecum", "pylorus", "z-line", "retroflex-rectum"][i % 4]
        organ = "upper-gi-tract" if f in ("pylorus", "z-line") else "lower-gi-tract"
        jpeg(L / organ / "anatomical-landmarks" / f / f"n{i:04d}-aaaa.jpg", RNG.integers(0, 255, (40, 48, 3)))
    for i in range(6):
        stem = f"p{i:04d}-bbbb"
        jpeg(L / "lower-gi-tract" / "pathological-findings" / "polyps" / f"{stem}.jpg", RNG.integers(0, 255, (40, 48, 3)))
        mk = np.zeros((40, 48, 3)); mk[10:20, 10:30] = 255
        jpeg(raw / "segmented-images" / "masks" / f"{stem}.jpg", mk); jpeg(raw / "segmented-images" / "images" / f"{stem}.jpg", mk)
    write_csv(L / "image-labels.csv", ["Video file", "Organ", "Finding", "Classification"],
              [["n0000-aaaa", "Lower GI", "cecum", "anatomical-landmarks"]])


def fab_rsna(raw):
    "8-bit DICOMs: 10 normal patients, 6 with lung-opacity boxes (2 'not normal' ones are excluded by prepare)."
    pids = [f"{i:08x}-0000-4000-8000-0000000000{i:02d}" for i in range(18)]
    classes = ["Normal"] * 10 + ["Lung Opacity"] * 6 + ["No Lung Opacity / Not Normal"] * 2
    labels = []
    for p, c in zip(pids, classes):
        write_dicom(raw / "stage_2_train_images" / f"{p}.dcm", RNG.integers(0, 255, (64, 64)))
        labels += [[p, 10, 12, 20, 16, 1]] if c == "Lung Opacity" else [[p, "", "", "", "", 0]]
    write_csv(raw / "stage_2_train_labels.csv", ["patientId", "x", "y", "width", "height", "Target"], labels)
    write_csv(raw / "stage_2_detailed_class_info.csv", ["patientId", "class"], list(zip(pids, classes)))


def fab_covid_cxr(raw):
    "COVIDx-style lists: grey PNG / JPEG images, train.txt and test.txt with patient, file, class and source."
    lines = {"train": [], "test": []}
    for i in range(18):
        split = "train" if i < 12 else "test"
        cls = ["negative", "positive", "negative"][i % 3]
        fn = f"img_{i}.png" if i % 2 else f"img_{i}.jpg"
        jpeg(raw / split / fn, RNG.integers(0, 255, (30, 36)))
        lines[split].append(f"P{i} {fn} {cls} source{i % 2}")
    for s in lines: (raw / f"{s}.txt").write_text("\n".join(lines[s]) + "\n")


def prepared(tmp_path, name, fab, *extra, download=False):
    raw, out = tmp_path / "raw", tmp_path / "prepared"
    fab(raw)
    if download: assert run(name, "download", "--raw-dir", raw, "--no-splits") == 0
    rows, prov = prepare_and_check(name, raw, out, *extra)
    return out, rows, prov


# --------------------------------------------------------------------------------------------------- MAE-UAD
def check_mae_uad(m, out):
    assert m["smoke"] is True
    for k in ("auroc", "ap", "f1_max"): assert finite(m["image"][k]), k
    for name, r in m["settings"].items(): assert finite(r["image"]["auroc"]), name
    rows = card(m)
    assert rows["metric"]["match"] is True
    assert rows["test-time masks"]["paper"].startswith("K = 4") and rows["test-time mask draws"]["match"] is False
    assert rows["image size"]["match"] is False and "smoke" in rows["image size"]["note"]       # 32 px, flagged
    assert rows["checkpoint selection"]["match"] is True and "real validation" in rows["checkpoint selection"]["paper"]
    assert (out / "protocol.md").read_text().startswith("**MAE-UAD on")
    return rows


def test_mae_uad_brats2020(tmp_path, run_repro):
    pytest.importorskip("h5py")
    data, rows_, prov = prepared(tmp_path, "brats2020", fab_brats2020, "--own-splits", download=True)
    m, out = run_repro("repro_mae_uad", dataset="brats2020", data_dir=str(data))
    rows = check_mae_uad(m, out)
    check_intensity(m, "as_stored", 1.0, 0.0)
    assert rows["intensity contract"]["match"] is True and rows["intensity contract"]["paper"].startswith("as_stored")
    assert rows["channels"]["match"] is True and "channel 0" in rows["channels"]["paper"]
    assert "slices" in rows["metric"]["paper"] and rows["test-time masks"]["paper"].endswith("ratio 0.85, visible patches pasted back, averaged")
    assert rows["slices used"]["paper"].startswith("train/0 15557") and rows["slices used"]["match"] is False
    # the split row carries the checksums prepare recorded, and the manifest's own SHA-256
    split = rows["split and its checksums"]
    for f in prov["split_files"].values(): assert f["sha256"] in split["ours"]
    assert split["match"] is False and "own lists" in split["note"]                           # fabricated lists, flagged
    sha = hashlib.sha256((data / "manifest.csv").read_bytes()).hexdigest()
    assert m["data"]["manifest_sha256"] == sha and sha in split["ours"]


def test_mae_uad_luna16(tmp_path, run_repro):
    data, rows_, prov = prepared(tmp_path, "luna16", fab_luna16, "--crop-size", 16, "--own-splits")
    m, out = run_repro("repro_mae_uad", dataset="luna16", data_dir=str(data))
    rows = check_mae_uad(m, out)
    check_intensity(m, "hu_div_100", 0.01, 0.0)
    i = rows["intensity contract"]
    assert i["match"] is True and i["paper"].startswith("hu_div_100") and "/ 100" in i["paper"] and "hu_div_100" in i["ours"]
    assert "candidate-level" in rows["metric"]["paper"] and rows["test-time masks"]["paper"].endswith("ratio 0.75, visible patches pasted back, averaged")
    assert rows["candidate regions used"]["paper"].startswith("train/0 49964")
    assert rows["candidate crop"]["match"] is None and "16 x 16" in rows["candidate crop"]["ours"]
    for f in prov["split_files"].values(): assert f["sha256"] in rows["split and its checksums"]["ours"]


# --------------------------------------------------------------------------------------------------- MemMC-MAE
def check_memmc(m, out, in_chans):
    assert m["smoke"] is True and m["model"]["in_chans"] == in_chans
    for k in ("auroc", "ap", "f1_max"): assert finite(m["metrics"]["image"][k]), k
    rows = card(m)
    assert all(r["match"] is None for r in rows.values())                    # no method section or code to match
    assert rows["channels"]["ours"].startswith(str(in_chans))
    check_intensity(m, "uint8_to_unit", 1 / 255, 0.0)
    assert rows["intensity contract"]["ours"].startswith("uint8_to_unit") and "our choice" in rows["intensity contract"]["note"]
    assert "abstract" in rows["architecture"]["source"]
    assert (out / "protocol.md").exists() and (out / "memory_mass.png").exists()
    return rows


def test_memmc_mae_hyper_kvasir_in_colour(tmp_path, run_repro):
    data, _, _ = prepared(tmp_path, "hyper_kvasir", fab_hyper_kvasir, "--img-size", 24)
    m, out = run_repro("repro_memmc_mae", dataset="hyper_kvasir", data_dir=str(data), ablation=False)
    rows = check_memmc(m, out, 3)
    assert "RGB" in rows["channels"]["ours"]
    assert m["metrics"]["pixel"] is not None and finite(m["metrics"]["pixel"]["auroc"])   # polyp masks: localisation


def test_memmc_mae_rsna_pneumonia(tmp_path, run_repro):
    data, _, _ = prepared(tmp_path, "rsna_pneumonia", fab_rsna, "--img-size", 32)
    m, out = run_repro("repro_memmc_mae", dataset="rsna_pneumonia", data_dir=str(data), ablation=False)
    check_memmc(m, out, 1)


def test_memmc_mae_covid_cxr(tmp_path, run_repro):
    data, _, _ = prepared(tmp_path, "covid_cxr", fab_covid_cxr, "--img-size", 16, "--val-frac", "0.25")
    m, out = run_repro("repro_memmc_mae", dataset="covid_cxr", data_dir=str(data), ablation=False)
    check_memmc(m, out, 1)

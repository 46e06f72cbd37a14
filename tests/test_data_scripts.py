"""End-to-end tests of data_scripts/: for every dataset a tiny fabricated copy of its raw layout (folder and file
names, CSV columns, NIfTI / DICOM / JPEG / HDF5 / MetaImage / TIFF formats as the real one has) goes through
`prepare` and `check`, and the prepared folder is loaded back. No test touches the internet."""
from __future__ import annotations
import csv, hashlib, importlib.util, json, re, subprocess, sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / 'data_scripts'
sys.path.insert(0, str(SCRIPTS))
RNG = np.random.default_rng(0)


def script(name):
    "Import data_scripts/<name>.py as a module."
    spec = importlib.util.spec_from_file_location(f'ds_{name}', SCRIPTS / f'{name}.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def run(name, *argv) -> int:
    return script(name).run(script(name).SCRIPT, [str(a) for a in argv])


def write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w', newline='') as f:
        w = csv.writer(f); w.writerow(header); w.writerows(rows)


def nifti(path, data, zooms=(1, 1, 1)):
    import nibabel as nib
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.diag(list(zooms) + [1])), str(path))


def head(shape, lesion=None):
    "A bright ellipsoid 'brain' on a dark background, optionally with a brighter lesion box (returns img, seg)."
    g = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing='ij'))
    img = np.where((g ** 2).sum(0) < 0.6, 100 + RNG.normal(0, 5, shape), RNG.normal(0, 1, shape)).astype(np.float32)
    seg = np.zeros(shape, np.uint8)
    if lesion is not None: seg[lesion] = 1; img[lesion] += 80
    return img, seg


def load_prepared(name, out_dir):
    "Load the prepared folder's test split through the lead's `load_dataset`, as the repro notebooks will."
    from uad_notebooks.data import load_dataset
    rows = [r for r in csv.DictReader(open(Path(out_dir) / 'manifest.csv')) if r['split'] == 'test']
    ds = load_dataset(name, 'test', data_dir=out_dir, img_size=32)
    assert len(ds) == len(rows) > 0
    item = ds[0]
    assert tuple(item['image'].shape[-2:]) == (32, 32) and item['mask'].shape[-2:] == item['image'].shape[-2:]
    assert sorted({int(ds[i]['label']) for i in range(len(ds))}) == sorted({int(r['label']) for r in rows})
    return ds


def prepare_and_check(name, raw, out, *extra, spec_counts=False):
    assert run(name, 'prepare', '--raw-dir', raw, '--out-dir', out, *extra) == 0
    prov = json.loads((out / 'provenance.json').read_text())
    rc = run(name, 'check', '--out-dir', out, *([] if spec_counts else ['--no-spec-counts']))
    assert rc == 0
    assert (out / 'hashes.csv').exists()
    load_prepared(name, out)
    return list(csv.DictReader(open(out / 'manifest.csv'))), prov


# --------------------------------------------------------------------------------------------------- BraTS 2020
def fab_brats2020(raw):
    import h5py
    d = raw / 'BraTS2020_training_data' / 'content' / 'data'; d.mkdir(parents=True)
    for v in range(1, 5):
        for s in range(6):
            img = RNG.normal(0, 1, (16, 16, 4)); img[:2] = 0
            mask = np.zeros((16, 16, 3), np.uint8)
            if s in (2, 3): mask[5:9, 5:9, 1] = 1
            with h5py.File(d / f'volume_{v}_slice_{s}.h5', 'w') as f:
                f['image'] = img; f['mask'] = mask
    sp = raw / 'splits'; sp.mkdir()
    names = lambda vs, ss: '\n'.join(f'volume_{v}_slice_{s}.npy' for v in vs for s in ss) + '\n'
    (sp / 'normal_training_samples.txt').write_text(names([1, 2], [0, 1, 4, 5]))
    (sp / 'normal_val_samples.txt').write_text(names([3], [0, 1, 4, 5]))
    (sp / 'abnormal_val_samples.txt').write_text(names([3], [2, 3]))
    (sp / 'normal_test_samples.txt').write_text(names([4], [0, 1, 4, 5]))
    (sp / 'abnormal_test_samples.txt').write_text(names([4], [2, 3]))


def test_brats2020(tmp_path, capsys):
    pytest.importorskip('h5py')
    raw, out = tmp_path / 'raw', tmp_path / 'out'; fab_brats2020(raw)
    assert run('brats2020', 'download', '--raw-dir', raw, '--no-splits') == 0    # files placed: manual step satisfied
    with pytest.raises(ValueError, match='pinned in this repository.*--own-splits'):   # fabricated lists are not Georgescu's
        run('brats2020', 'prepare', '--raw-dir', raw, '--out-dir', out)
    rows, prov = prepare_and_check('brats2020', raw, out, '--own-splits')
    counts = {(r['split'], r['label']) for r in rows}
    assert counts == {('train', '0'), ('val', '0'), ('val', '1'), ('test', '0'), ('test', '1')}
    assert sum(r['split'] == 'train' for r in rows) == 8 and sum(r['label'] == '1' for r in rows) == 4
    assert prov['split_variant'] == 'faithful' and len(prov['split_files']) == 5 and prov['split_files_own']
    assert all(len(v['sha256']) == 64 and v['url'].startswith('https://raw.githubusercontent.com/lilygeorgescu/')
               and v['check'].startswith('own list') and len(v['pinned']) == 64 for v in prov['split_files'].values())
    assert np.load(out / rows[0]['image']).shape == (16, 16)
    # against the spec's counts the tiny copy must fail the check, with a clear message
    capsys.readouterr()
    assert run('brats2020', 'check', '--out-dir', out) == 1
    assert 'train/0: 8 (spec 15557)' in capsys.readouterr().out
    # a generated split needs no split files and keeps only tumour-free training slices
    out2 = tmp_path / 'gen'
    assert run('brats2020', 'prepare', '--raw-dir', raw, '--out-dir', out2, '--split-variant', 'generated',
               '--img-size', '8') == 0
    rows2 = list(csv.DictReader(open(out2 / 'manifest.csv')))
    assert all(r['label'] == '0' for r in rows2 if r['split'] == 'train')
    assert np.load(out2 / rows2[0]['image']).shape == (8, 8)
    with pytest.raises(FileExistsError, match='--overwrite'):
        run('brats2020', 'prepare', '--raw-dir', raw, '--out-dir', out2, '--split-variant', 'generated')


# --------------------------------------------------------------------------------------------------- IXI / BraTS21 / MSLUB
CHAIN = ['--crop-shape', 24, 24, 16, '--no-n4']   # N4 (only where SimpleITK is installed) takes seconds per volume


def pddpm_csv(path, names, prefix):
    write_csv(path, ['', 'img_name', 'age', 'label', 'img_path', 'mask_path', 'seg_path', 'Agegroup'],
              [[i, n, 40, 0, f'{prefix}/{n}', '', '', 1.0] for i, n in enumerate(names)])


def test_ixi_faithful_and_clean(tmp_path):
    raw, sp = tmp_path / 'raw', tmp_path / 'raw' / 'splits'
    ids = [f'IXI{i:03d}-{site}-{1000 + i:04d}' for i, site in zip(range(2, 8), ['Guys', 'HH', 'IOP', 'Guys', 'HH', 'Guys'])]
    for s in ids:
        nifti(raw / f'{s}-T2.nii.gz', head((20, 20, 12))[0], zooms=(1.2, 1.2, 1.5))
    t1 = lambda s: f'{s}_t1.nii.gz'
    train = [t1(ids[0]), t1(ids[1]), t1(ids[1]), t1(ids[5])]          # a duplicate, and ids[5] also in test
    for k in range(5):
        pddpm_csv(sp / f'IXI_train_fold{k}.csv', train, '/Train/ixi/t1')
        pddpm_csv(sp / f'IXI_val_fold{k}.csv', [t1(ids[2])], '/Train/ixi/t1')
    pddpm_csv(sp / 'IXI_test.csv', [t1(ids[3]), t1(ids[4]), t1(ids[5])], '/Train/ixi/t1')
    write_csv(sp / 'avail_t2.csv', ['', 'img_name'], [[i, f'{s}-T2.nii.gz'] for i, s in enumerate(ids)])
    rows, prov = prepare_and_check('ixi', raw, tmp_path / 'faithful', *CHAIN, '--own-splits')
    vols = lambda rows, sp: sum(r['split'] == sp and r['slice'] == '0' for r in rows)
    assert (vols(rows, 'train'), vols(rows, 'val'), vols(rows, 'test')) == (4, 1, 3)
    assert len(rows) == 8 * 8                                         # 16 slices at 1 mm -> 8 at 2 mm
    assert prov['split_variant'] == 'faithful'
    assert any(s['tool'].startswith('HD-BET') for s in prov['skipped'])  # not installed here: recorded
    import nibabel as nib
    v = np.asarray(nib.load(str(tmp_path / 'faithful' / rows[0]['image'])).dataobj)
    assert v.shape == (12, 12, 8) and v.min() >= 0 and v.max() <= 1
    rows, prov = prepare_and_check('ixi', raw, tmp_path / 'clean', *CHAIN, '--split-variant', 'clean', '--own-splits')
    assert (vols(rows, 'train'), vols(rows, 'test')) == (2, 3)       # duplicate and the test subject removed
    assert prov['split_variant'] == 'clean'


def test_brats2021(tmp_path):
    raw, sp = tmp_path / 'raw', tmp_path / 'raw' / 'splits'
    ids = [f'BraTS2021_{i:05d}' for i in (0, 2, 3)]
    for s in ids:
        img, seg = head((24, 24, 16), lesion=(slice(10, 14), slice(10, 14), slice(6, 10)))
        img[img < 50] = 0                                             # BraTS is skull-stripped: background exactly 0
        d = raw / 'RSNA_ASNR_MICCAI_BraTS2021_TrainingData_16July2021' / s
        for m in ('t1', 't1ce', 't2', 'flair'): nifti(d / f'{s}_{m}.nii.gz', img)
        nifti(d / f'{s}_seg.nii.gz', seg * 2)
    pddpm_csv(sp / 'Brats21_val.csv', [f'{ids[0]}_t1.nii.gz'], '/Test/Brats21/t1')
    pddpm_csv(sp / 'Brats21_test.csv', [f'{s}_t1.nii.gz' for s in ids[1:]], '/Test/Brats21/t1')
    rows, prov = prepare_and_check('brats2021', raw, tmp_path / 'out', *CHAIN, '--own-splits')
    assert {r['split'] for r in rows} == {'val', 'test'}
    assert {r['label'] for r in rows} == {'0', '1'} and all(r['mask'] for r in rows)
    lab = [int(r['label']) for r in rows if r['subject'] == ids[1]]
    assert lab[3:5] == [1, 1] and lab[0] == 0                          # lesion slices 6..9 -> 3..4 at 2 mm


def test_mslub(tmp_path):
    """MSLUB with the published lists this repository ships (no split files placed, no network): patient01 is in
    MSLUB_val, patient13 and patient26 in MSLUB_test."""
    raw, sp = tmp_path / 'raw', tmp_path / 'raw' / 'splits'
    for i in (1, 13, 26):
        s = f'patient{i:02d}'
        img, seg = head((20, 20, 14), lesion=(slice(8, 11), slice(8, 11), slice(4, 8)))
        nifti(raw / s / 'raw' / f'{s}_T2W.nii.gz', img); nifti(raw / s / 'raw' / f'{s}_FLAIR.nii.gz', img)
        nifti(raw / s / f'{s}_consensus_gt.nii.gz', seg)
    assert run('mslub', 'download', '--raw-dir', raw, '--offline') == 0       # installs the shipped, pinned lists
    assert {p.name for p in sp.glob('MSLUB_*.csv')} == {'MSLUB_val.csv', 'MSLUB_test.csv'}
    rows, prov = prepare_and_check('mslub', raw, tmp_path / 'out', *CHAIN)
    assert sum(r['label'] == '1' for r in rows) > 0
    assert {r['subject'] for r in rows if r['split'] == 'test'} == {'patient13', 'patient26'}
    assert {r['subject'] for r in rows if r['split'] == 'val'} == {'patient01'}
    assert all(v['check'] == 'pinned in the repository' for v in prov['split_files'].values())
    # an edited split file is refused with the pinned hash named
    (sp / 'MSLUB_test.csv').write_text((sp / 'MSLUB_test.csv').read_text().replace('patient26', 'patient27'))
    with pytest.raises(ValueError, match='pinned'):
        run('mslub', 'prepare', '--raw-dir', raw, '--out-dir', tmp_path / 'out2', *CHAIN)


NAMES = ['brats2020', 'brats2021', 'ixi', 'mslub', 'luna16', 'rsna_pneumonia', 'hyper_kvasir', 'covid_cxr', 'nih_cxr14',
         'camelyon16']


def test_shipped_split_files_match_their_pins():
    """Every split file a script uses is pinned (SHA-256 and commit in splits/pins.csv, nothing trusted on first use);
    every shipped copy (plain or .gz) decompresses to exactly the pinned bytes (size, SHA-256 and git blob id), and no
    other file sits in splits/; the lists hold the counts the scripts expect from the specs (A.8, A.12, B.7)."""
    from _common import PINS, SHIPPED, shipped_bytes
    scripts = {n: script(n) for n in NAMES}
    used = {(s.SCRIPT.split_files.repo, p) for s in scripts.values() if s.SCRIPT.split_files for p in s.SCRIPT.split_files.paths}
    assert used <= set(PINS) and len(used) == 39
    for n, s in scripts.items():
        spec = s.SCRIPT.split_files
        if spec is None: continue
        assert set(spec.sha256) == set(spec.paths) == set(spec.shipped), n       # all pinned, all shipped
        assert all(PINS[spec.repo, p]['used_by'] == n for p in spec.paths), n
    files = {f.relative_to(SHIPPED).as_posix() for f in SHIPPED.rglob('*') if f.is_file()} - {'README.md', 'pins.csv'}
    assert files == {r['shipped'] for r in PINS.values() if r['shipped']}
    total = 0
    for (repo, path), r in PINS.items():
        assert re.fullmatch(r'[0-9a-f]{40}', r['commit']) and re.fullmatch(r'[0-9a-f]{64}', r['sha256'])
        if not r['shipped']: continue
        data = shipped_bytes(SHIPPED / r['shipped']); total += (SHIPPED / r['shipped']).stat().st_size
        assert len(data) == int(r['bytes']) and hashlib.sha256(data).hexdigest() == r['sha256'], path
        assert hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest() == r['git_blob'], path
        assert b'\r' not in data
    assert total < 1_000_000                                                     # small enough to ship
    text = lambda repo, path: shipped_bytes(SHIPPED / PINS[repo, path]['shipped']).decode()
    lines = lambda repo, path: [l for l in text(repo, path).splitlines() if l.strip()]
    rows = lambda path: list(csv.DictReader(text('hasan1292/mDDPM', path).splitlines()))
    for n in ('brats2020', 'luna16'):                                            # Georgescu's lists vs the spec counts
        g = scripts[n]
        got = {lab: len(lines(g.GEORGESCU[0], f'dataset/split/{"brats" if n == "brats2020" else n}/{f}'))
               for f, lab in g.SPLIT_LISTS.items()}
        assert got == g.EXPECTED, n
    nih = scripts['nih_cxr14']
    for view in ('PA', 'AP', 'subset'):
        got = {k: len(lines(nih.DPA[0], f'folds/train_test_split/nih/{view}/{l}')) for k, l in nih.LISTS.items()}
        assert got == nih.EXPECTED[view], view
    subset = {l: set(lines(nih.DPA[0], f'folds/train_test_split/nih/subset/{l}/test')) for l in ('normal', 'anomaly')}
    assert not subset['normal'] & subset['anomaly']
    cam = scripts['camelyon16']
    assert {v: len(lines(cam.DPA[0], f'folds/train_test_split/camelyon16/healthy/{l}')) for l, v in cam.LISTS.items()} \
        == cam.EXPECTED
    ixi = scripts['ixi']
    t2 = {ixi.subject_of(v, ixi.IXI_ID) for r in rows('Data/splits/avail_t2.csv') for v in r.values() if 'IXI' in v}
    n_t2 = lambda path: sum(ixi.subject_of(r['img_name'], ixi.IXI_ID) in t2 for r in rows(path))
    for k, (tr, va) in ixi.EXPECTED.items():                                     # after pDDPM's T2 filter
        assert (n_t2(f'Data/splits/IXI_train_fold{k}.csv'), n_t2(f'Data/splits/IXI_val_fold{k}.csv')) == (tr, va), k
    assert n_t2('Data/splits/IXI_test.csv') == 158
    assert (len(rows('Data/splits/Brats21_val.csv')), len(rows('Data/splits/Brats21_test.csv'))) == (100, 1151)
    ms = {k: rows(f'Data/splits/MSLUB_{k}.csv') for k in ('val', 'test')}
    assert (len(ms['val']), len(ms['test'])) == (10, 20)
    assert sorted(r['img_name'] for v in ms.values() for r in v) == [f'patient{i:02d}' for i in range(1, 31)]


def test_offline_download_installs_the_pinned_lists(tmp_path, capsys):
    """`download --offline` puts every published list of a script into RAW/splits from the shipped copies (gzip ones
    decompressed), each equal to its pin; a second run finds them in place."""
    for n in ('brats2020', 'nih_cxr14', 'brats2021'):            # manual data (no automatic download to try)
        spec = script(n).SCRIPT.split_files
        raw = tmp_path / n
        run(n, 'download', '--raw-dir', raw, '--offline')                 # manual data absent: rc 2, splits installed
        for p in spec.paths:
            assert hashlib.sha256(spec.local(raw / 'splits', p).read_bytes()).hexdigest() == spec.sha256[p], (n, p)
        assert json.loads((raw / 'splits' / 'split_hashes.json').read_text())['sha256'] == spec.sha256
    capsys.readouterr(); run('brats2021', 'download', '--raw-dir', tmp_path / 'brats2021', '--offline')
    assert 'present, matches the pin (pinned; upstream not contacted)' in capsys.readouterr().out


def test_manual_step_printed_when_files_missing(tmp_path, capsys):
    assert run('mslub', 'download', '--raw-dir', tmp_path / 'empty', '--no-splits') == 2
    out = capsys.readouterr().out
    assert 'lit.fe.uni-lj.si' in out and 'patient*T2W*' in out
    with pytest.raises(FileNotFoundError, match='agree to the terms'):
        run('mslub', 'prepare', '--raw-dir', tmp_path / 'empty', '--out-dir', tmp_path / 'o')


def test_ants_registration_brings_a_moved_template_back(tmp_path):
    """The chain's affine ANTs registration (antspyx) on real anatomy: nilearn's MNI152 template, rotated by 8 degrees
    and shifted by a few voxels, is registered back onto the template (both on a 1-voxel grid, 4 mm MNI, for speed)."""
    ants = pytest.importorskip('ants')
    import argparse
    from scipy import ndimage
    from nilearn.datasets import load_mni152_template
    from _pddpm import Chain
    from uad_notebooks.prepare import Provenance
    fixed = ndimage.zoom(np.asarray(load_mni152_template(resolution=2).dataobj, np.float32), 0.5, order=1)
    nifti(tmp_path / 'template.nii.gz', fixed)
    a = np.deg2rad(8); rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    c = (np.array(fixed.shape) - 1) / 2
    moving = ndimage.affine_transform(fixed, rot, offset=c - rot @ c + np.array([3, -2, 2]), order=1)
    th = 0.2 * fixed.max(); brain = fixed > th                                       # head mask
    prov = Provenance('t', 't')
    chain = Chain(prov, argparse.Namespace(crop_shape=[8, 8, 8], out_spacing=2.0, no_n4=True), resample_1mm=False,
                  skull_strip='given', sri24=tmp_path / 'template.nii.gz')
    assert any(st['name'] == 'register' for st in prov.d['steps'])
    img, reg_brain, _ = chain._register(moving, moving > th, None)
    ncc = lambda x, y: float(np.corrcoef(x.ravel(), y.ravel())[0, 1])
    dice = lambda x, y: 2 * (x & y).sum() / (x.sum() + y.sum())
    assert img.shape == fixed.shape
    assert ncc(moving, fixed) < 0.85 and ncc(img, fixed) > 0.98                         # aligned again
    assert dice(moving > th, brain) < 0.9 and dice(reg_brain, brain) > 0.95


def test_missing_split_files_is_a_clear_error(tmp_path):
    """The published lists are shipped (installed offline); own lists (--own-splits) that are not there are a clear error."""
    raw = tmp_path / 'raw'
    nifti(raw / 'IXI002-Guys-0828-T2.nii.gz', head((12, 12, 8))[0])
    with pytest.raises(FileNotFoundError, match='IXI_train_fold0.csv'):
        run('ixi', 'prepare', '--raw-dir', raw, '--out-dir', tmp_path / 'o', '--own-splits')


# --------------------------------------------------------------------------------------------------- LUNA16
def write_mhd(path, vol, origin, spacing):
    "MetaImage pair as LUNA16 ships it (.mhd header + .raw int16 data, z-major)."
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix('.raw').write_bytes(vol.astype('<i2').tobytes())
    path.write_text('\n'.join([
        'ObjectType = Image', 'NDims = 3', 'BinaryData = True', 'BinaryDataByteOrderMSB = False',
        'CompressedData = False', 'TransformMatrix = 1 0 0 0 1 0 0 0 1', f'Offset = {" ".join(map(str, origin))}',
        'CenterOfRotation = 0 0 0', 'AnatomicalOrientation = RAI', f'ElementSpacing = {" ".join(map(str, spacing))}',
        f'DimSize = {vol.shape[2]} {vol.shape[1]} {vol.shape[0]}', 'ElementType = MET_SHORT',
        f'ElementDataFile = {path.with_suffix(".raw").name}']) + '\n')


def test_luna16(tmp_path):
    raw = tmp_path / 'raw'
    uids = [f'1.3.6.1.4.1.14519.5.2.1.6279.6001.{i}' for i in (101, 202, 303)]
    cands = []
    for k, uid in enumerate(uids):
        vol = np.full((10, 40, 40), -1000, np.int16); vol[4:7, 15:25, 15:25] = 40      # a 'nodule' block
        origin, spacing = (-100.0, -120.0, -300.0 + k), (0.7, 0.7, 2.5)
        write_mhd(raw / f'subset{k}' / f'{uid}.mhd', vol, origin, spacing)
        for j in range(4):   # candidate j: class 1 at the block centre, class 0 elsewhere
            vx, vy, vz = (20, 20, 5) if j == 0 else (8 + j, 30, 2)
            world = [origin[0] + vx * spacing[0], origin[1] + vy * spacing[1], origin[2] + vz * spacing[2]]
            cands.append([uid, *world, int(j == 0)])
    write_csv(raw / 'CSVFILES' / 'candidates.csv', ['seriesuid', 'coordX', 'coordY', 'coordZ', 'class'], cands)
    sp = raw / 'splits'; sp.mkdir()
    w = lambda f, rows: (sp / f).write_text(''.join(f'{r}.npy\n' for r in rows))
    # rows: scan k holds candidate rows 4k (class 1) and 4k+1..4k+3 (class 0)
    w('normal_training_samples.txt', [1, 2, 5, 6]); w('normal_val_samples.txt', [3]); w('abnormal_val_samples.txt', [0])
    w('normal_test_samples.txt', [9, 10, 7]); w('abnormal_test_samples.txt', [4, 8])
    rows, prov = prepare_and_check('luna16', raw, tmp_path / 'out', '--crop-size', 16, '--own-splits')
    assert len(rows) == 11 and sum(r['label'] == '1' for r in rows) == 3
    step = next(s for s in prov['steps'] if s['name'] == 'row convention'); assert step['offset'] == 0
    a = np.load(tmp_path / 'out' / 'images' / '4.npy')
    assert a.shape == (16, 16) and a[8, 8] == 40 and a.min() == -1000      # nodule centred, raw HU kept
    # scan 1 has candidates in train (5, 6) and test (4, 7): the faithful split warns, the clean one drops them
    rep = json.loads(json.dumps(__import__('uad_notebooks.prepare', fromlist=['x']).check_prepared(tmp_path / 'out')))
    assert rep['warnings'] and not rep['errors']
    rows, _ = prepare_and_check('luna16', raw, tmp_path / 'clean', '--crop-size', 16, '--split-variant', 'clean',
                                '--own-splits')
    scans = {}
    for r in rows: scans.setdefault(r['subject'], set()).add(r['split'])
    assert all(len(v) == 1 for v in scans.values())


# --------------------------------------------------------------------------------------------------- RSNA
def write_dicom(path, arr):
    "A minimal DICOM (8-bit MONOCHROME2, like the RSNA files) written with pydicom."
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
    meta = FileMetaDataset(); meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid(); meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b'\0' * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID; ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID = path.stem; ds.Modality = 'CR'; ds.ViewPosition = 'PA'
    ds.Rows, ds.Columns = arr.shape; ds.SamplesPerPixel = 1; ds.PhotometricInterpretation = 'MONOCHROME2'
    ds.BitsAllocated = ds.BitsStored = 8; ds.HighBit = 7; ds.PixelRepresentation = 0
    ds.PixelData = arr.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True); ds.save_as(str(path), enforce_file_format=True)


def test_rsna_pneumonia(tmp_path):
    raw = tmp_path / 'raw'
    pids = [f'{i:08x}-0000-4000-8000-00000000000{i % 10}' for i in range(12)]
    classes = ['Normal'] * 6 + ['Lung Opacity'] * 4 + ['No Lung Opacity / Not Normal'] * 2
    labels = []
    for p, c in zip(pids, classes):
        write_dicom(raw / 'stage_2_train_images' / f'{p}.dcm', RNG.integers(0, 255, (64, 64)))
        labels += [[p, 10, 12, 20, 16, 1]] if c == 'Lung Opacity' else [[p, '', '', '', '', 0]]
    write_csv(raw / 'stage_2_train_labels.csv', ['patientId', 'x', 'y', 'width', 'height', 'Target'], labels)
    write_csv(raw / 'stage_2_detailed_class_info.csv', ['patientId', 'class'], list(zip(pids, classes)))
    assert run('rsna_pneumonia', 'download', '--raw-dir', raw) == 0
    rows, prov = prepare_and_check('rsna_pneumonia', raw, tmp_path / 'out', '--img-size', 32)
    assert len(rows) == 10 and all(r['label'] == '0' for r in rows if r['split'] == 'train')
    ab = next(r for r in rows if r['label'] == '1')
    from PIL import Image
    m = np.asarray(Image.open(tmp_path / 'out' / ab['mask']))
    assert m.shape == (32, 32) and m[8, 8] == 255 and m[0, 0] == 0          # box x 10..30, y 12..28 at half scale
    assert 'No Lung Opacity / Not Normal' in prov['steps'][0]['excluded']


# --------------------------------------------------------------------------------------------------- Hyper-Kvasir
def jpeg(path, arr):
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True); Image.fromarray(arr.astype(np.uint8)).save(path, quality=95)


def test_hyper_kvasir(tmp_path):
    raw = tmp_path / 'raw'
    L = raw / 'labeled-images'
    for i in range(8):
        f = ['cecum', 'pylorus', 'z-line', 'retroflex-rectum'][i % 4]
        organ = 'upper-gi-tract' if f in ('pylorus', 'z-line') else 'lower-gi-tract'
        jpeg(L / organ / 'anatomical-landmarks' / f / f'n{i:04d}-aaaa.jpg', RNG.integers(0, 255, (40, 48, 3)))
    for i in range(4):
        stem = f'p{i:04d}-bbbb'
        jpeg(L / 'lower-gi-tract' / 'pathological-findings' / 'polyps' / f'{stem}.jpg', RNG.integers(0, 255, (40, 48, 3)))
        mk = np.zeros((40, 48, 3)); mk[10:20, 10:30] = 255
        jpeg(raw / 'segmented-images' / 'masks' / f'{stem}.jpg', mk); jpeg(raw / 'segmented-images' / 'images' / f'{stem}.jpg', mk)
    jpeg(L / 'lower-gi-tract' / 'quality-of-mucosal-views' / 'bbps-2-3' / 'q0000.jpg', RNG.integers(0, 255, (40, 48, 3)))
    write_csv(L / 'image-labels.csv', ['Video file', 'Organ', 'Finding', 'Classification'], [['n0000-aaaa', 'Lower GI', 'cecum', 'anatomical-landmarks']])
    rows, _ = prepare_and_check('hyper_kvasir', raw, tmp_path / 'out', '--img-size', 24)
    assert len(rows) == 12 and sum(r['label'] == '1' for r in rows) == 4
    assert all(r['mask'] for r in rows if r['label'] == '1')
    from PIL import Image
    assert np.asarray(Image.open(tmp_path / 'out' / rows[0]['image'])).shape == (24, 24, 3)


# --------------------------------------------------------------------------------------------------- COVIDx
def test_covid_cxr(tmp_path):
    raw = tmp_path / 'raw'
    lines = {'train': [], 'test': []}
    for i in range(12):
        split = 'train' if i < 8 else 'test'
        cls = ['negative', 'positive', 'negative'][i % 3]
        fn = f'img_{i}.png' if i % 2 else f'img_{i}.jpg'
        jpeg(raw / split / fn, RNG.integers(0, 255, (30, 36)))
        lines[split].append(f'P{i // 2} {fn} {cls} source{i % 2}')
    (raw / 'train.txt').write_text('\n'.join(lines['train']) + '\n'); (raw / 'test.txt').write_text('\n'.join(lines['test']) + '\n')
    rows, _ = prepare_and_check('covid_cxr', raw, tmp_path / 'out', '--img-size', 16, '--val-frac', '0.25')
    assert all(r['label'] == '0' for r in rows if r['split'] == 'train')
    assert {r['label'] for r in rows if r['split'] == 'test'} == {'0', '1'}
    assert {r['split'] for r in rows} == {'train', 'val', 'test'}


# --------------------------------------------------------------------------------------------------- NIH CXR14
def test_nih_cxr14(tmp_path):
    from PIL import Image
    raw = tmp_path / 'raw'; (raw / 'images').mkdir(parents=True)
    entries, train, test = [], [], []
    for i in range(16):
        name = f'{i // 2:08d}_{i % 2:03d}.png'
        Image.fromarray(RNG.integers(0, 255, (320, 320)).astype(np.uint8)).save(raw / 'images' / name)
        view = 'PA' if i % 4 else 'AP'
        find = 'No Finding' if i % 3 else 'Infiltration|Effusion'
        entries.append([name, find, 0, i // 2, 50, 'M', view, 320, 320, 0.14, 0.14])
        (test if i >= 10 else train).append(name)
    write_csv(raw / 'Data_Entry_2017.csv', ['Image Index', 'Finding Labels', 'Follow-up #', 'Patient ID', 'Patient Age',
              'Patient Gender', 'View Position', 'OriginalImage[Width', 'Height]', 'OriginalImagePixelSpacing[x', 'y]'], entries)
    (raw / 'train_val_list.txt').write_text('\n'.join(train) + '\n'); (raw / 'test_list.txt').write_text('\n'.join(test) + '\n')
    # DPA's published lists for PA, as the download step stores them
    sp = raw / 'splits'; sp.mkdir()
    pa = [e for e in entries if e[6] == 'PA']
    (sp / 'nih_PA_normal_train.txt').write_text(''.join(f'{e[0]}\n' for e in pa if e[0] in train and e[1] == 'No Finding'))
    (sp / 'nih_PA_normal_test.txt').write_text(''.join(f'{e[0]}\n' for e in pa if e[0] in test and e[1] == 'No Finding'))
    (sp / 'nih_PA_anomaly_test.txt').write_text(''.join(f'{e[0]}\n' for e in pa if e[0] in test and e[1] != 'No Finding'))
    rows, prov = prepare_and_check('nih_cxr14', raw, tmp_path / 'pa', '--view', 'PA', '--own-splits')
    listed = sum(len((sp / f).read_text().split()) for f in ('nih_PA_normal_train.txt', 'nih_PA_normal_test.txt', 'nih_PA_anomaly_test.txt'))
    assert len(rows) == listed and prov['split_variant'] == 'faithful' and len(prov['split_files']) == 3
    assert not any(r['findings'] != 'No Finding' for r in rows if r['split'] == 'train')
    assert np.asarray(Image.open(tmp_path / 'pa' / rows[0]['image'])).shape == (64, 64)
    # the same split derived from the official lists + Data_Entry (how DPA built it) must agree with the lists
    rows2, prov2 = prepare_and_check('nih_cxr14', raw, tmp_path / 'pa2', '--view', 'PA', '--split-variant', 'generated')
    key = lambda rs: sorted((r['split'], r['label'], r['image']) for r in rs)
    assert key(rows) == key(rows2)
    rows3, prov3 = prepare_and_check('nih_cxr14', raw, tmp_path / 'ap', '--view', 'AP', '--split-variant', 'generated')
    assert all(r['view'] == 'AP' for r in rows3) and prov3['steps'][-1]['equalize'] is True


def test_nih_cxr14_subset_folder_fabricated(tmp_path, capsys):
    """A subset folder (class folders + labels.csv, as ../shared/data/nih-cxr14-pneumonia-256) runs with a generated
    patient-level split; `check` reports the counts beside the spec's and passes; faithful is refused clearly."""
    from PIL import Image
    raw = tmp_path / 'raw'; lab = []
    for i in range(12):
        cls = 'normal' if i < 7 else 'pneumonia'
        name = f'{i % 9:08d}_{i:03d}.png'                            # patients 0..8; patients 7, 8 have both classes
        (raw / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(RNG.integers(0, 255, (64, 64)).astype(np.uint8)).save(raw / cls / name)
        lab.append([name, cls, int(cls != 'normal'), 'No Finding' if cls == 'normal' else ('Pneumonia' if i % 2 else ''),
                    '' if i == 11 else i % 9, 40, 'F', 'PA' if i % 3 else 'AP', 0])
    write_csv(raw / 'labels.csv', ['file', 'class', 'label', 'nih_finding_labels', 'patient_id', 'patient_age',
                                   'patient_sex', 'view_position', 'has_bbox'], lab)
    with pytest.raises(ValueError, match='split-variant generated'):
        run('nih_cxr14', 'prepare', '--raw-dir', raw, '--out-dir', tmp_path / 'f', '--view', 'PA')
    rows, prov = prepare_and_check('nih_cxr14', raw, tmp_path / 'pa', '--view', 'PA', '--split-variant', 'generated',
                                   spec_counts=True)
    assert 'check passed (subset)' in capsys.readouterr().out and prov['subset']['images'] == 12
    want = [l for l in lab if l[7] == 'PA']
    assert len(rows) == len(want) and all(r['view'] == 'PA' for r in rows)
    assert all(r['label'] == '0' for r in rows if r['split'] == 'train')
    assert {r['subject'] for r in rows if r['split'] == 'train'}.isdisjoint({r['subject'] for r in rows if r['split'] == 'test'})
    sick = {str(int(l[0][:8])) for l in want if l[2] == 1}
    assert sick <= {r['subject'] for r in rows if r['split'] == 'test'}


def test_nih_cxr14_on_shared_real_subset(shared_data, tmp_path, capsys):
    """Real data: the 1000 NIH images of ../shared/data (PA view: every PA image prepared, patient-level split)."""
    raw = shared_data / 'nih-cxr14-pneumonia-256'
    if not raw.exists(): pytest.skip(f'{raw} is not present')
    lab = list(csv.DictReader(open(raw / 'labels.csv')))
    rows, prov = prepare_and_check('nih_cxr14', raw, tmp_path / 'pa', '--view', 'PA', '--split-variant', 'generated',
                                   spec_counts=True)
    out = capsys.readouterr().out
    assert 'check passed (subset)' in out and '34497 in the spec' in out
    n = lambda split, label: sum(r['split'] == split and r['label'] == label for r in rows)
    pa = [l for l in lab if l['view_position'] == 'PA']
    assert n('train', '0') + n('test', '0') == sum(l['label'] == '0' for l in pa)
    assert n('test', '1') == sum(l['label'] == '1' for l in pa) and n('train', '1') == 0
    assert {r['subject'] for r in rows if r['split'] == 'train'}.isdisjoint({r['subject'] for r in rows if r['split'] == 'test'})
    assert not (raw / 'splits').exists()                             # nothing written into the shared folder


# --------------------------------------------------------------------------------------------------- CAMELYON16
def wsi(path, tumour_box=None):
    "A small single-level RGB TIFF: white background, pink tissue disc, darker purple tumour box."
    from PIL import Image
    yy, xx = np.mgrid[:192, :192]
    img = np.full((192, 192, 3), 245, np.uint8)
    img[(yy - 96) ** 2 + (xx - 96) ** 2 < 80 ** 2] = (220, 140, 200)
    if tumour_box: y0, y1, x0, x1 = tumour_box; img[y0:y1, x0:x1] = (150, 60, 160)
    path.parent.mkdir(parents=True, exist_ok=True); Image.fromarray(img).save(path)


def asap_xml(path, box):
    y0, y1, x0, x1 = box
    pts = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    coords = ''.join(f'<Coordinate Order="{i}" X="{x}" Y="{y}" />' for i, (x, y) in enumerate(pts))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'<?xml version="1.0"?><ASAP_Annotations><Annotations><Annotation Name="Annotation 0" '
                    f'Type="Polygon" PartOfGroup="Tumor" Color="#F4FA58"><Coordinates>{coords}</Coordinates>'
                    f'</Annotation></Annotations><AnnotationGroups /></ASAP_Annotations>')


def test_camelyon16(tmp_path):
    raw = tmp_path / 'raw'
    box = (48, 144, 48, 144)
    for n in ('normal_001', 'normal_002', 'normal_027'): wsi(raw / 'training' / 'normal' / f'{n}.tif')
    wsi(raw / 'training' / 'tumor' / 'tumor_001.tif', box); asap_xml(raw / 'training' / 'lesion_annotations' / 'tumor_001.xml', box)
    wsi(raw / 'testing' / 'images' / 'test_001.tif', box); asap_xml(raw / 'testing' / 'lesion_annotations' / 'test_001.xml', box)
    wsi(raw / 'testing' / 'images' / 'test_002.tif')
    (raw / 'testing' / 'reference.csv').write_text('test_001,Tumor,Macro,Primary\ntest_002,Normal\n')
    args = ['--patch-size', 24, '--out-size', 12, '--per-slide', 5]
    rows, prov = prepare_and_check('camelyon16', raw, tmp_path / 'gen', *args, '--split-variant', 'generated')
    got = {(r['split'], r['label']) for r in rows}
    assert got == {('train', '0'), ('val', '1'), ('test', '0'), ('test', '1')}
    assert sum(r['split'] == 'train' for r in rows) == 10                      # 5 per slide, normal_027 excluded
    assert not any(r['subject'] == 'normal_027' for r in rows)
    for r in rows:                                                             # tumour patches lie inside the box
        if r['label'] == '1':
            x, y = map(int, re.search(r'_x_(\d+)_y_(\d+)', r['image']).groups())
            assert 48 <= x and x + 24 <= 144 and 48 <= y and y + 24 <= 144
    assert any(s['tool'].startswith('Vahadane') for s in prov['skipped'])
    # DPA's published patch lists: exactly those patches are cut (normal/train absent -> sampled)
    sp = raw / 'splits'; sp.mkdir()
    (sp / 'camelyon16_anomaly_train.txt').write_text('tumor_001_tumor_x_72_y_72_w_768_h_768.jpg\n')
    (sp / 'camelyon16_anomaly_test.txt').write_text('test_001_tumor_x_96_y_48_w_768_h_768.jpg\n')
    (sp / 'camelyon16_normal_test.txt').write_text('test_002_normal_x_60_y_60_w_768_h_768.jpg\ntest_002_normal_x_84_y_84_w_768_h_768.jpg\n')
    rows, prov = prepare_and_check('camelyon16', raw, tmp_path / 'faithful', *args, '--own-splits')
    assert [r['image'] for r in rows if r['split'] == 'val'] == ['images/tumor_001_tumor_x_72_y_72_w_24_h_24.png']
    assert sum(r['split'] == 'test' for r in rows) == 3 and sum(r['split'] == 'train' for r in rows) == 10


H_OD, E_OD = np.array([0.65, 0.70, 0.29]), np.array([0.27, 0.90, 0.34])     # haematoxylin- / eosin-like OD directions


def he_rgb(shape, stains, seed):
    "H&E-like RGB by Beer-Lambert: nuclei (H), stroma (E) and mixtures with known unit stain OD vectors."
    g = np.random.default_rng(seed); k = int(np.prod(shape))
    S = np.stack([v / np.linalg.norm(v) for v in stains], 1)
    kind = g.choice(3, k, p=[0.3, 0.35, 0.35]); c = g.uniform(0.2, 0.9, (2, k))
    c[1, kind == 0] = g.uniform(0, 0.05, (kind == 0).sum()); c[0, kind == 0] = g.uniform(0.3, 1.5, (kind == 0).sum())
    c[0, kind == 1] = g.uniform(0, 0.05, (kind == 1).sum()); c[1, kind == 1] = g.uniform(0.6, 1.5, (kind == 1).sum())
    return np.clip(255 * np.exp(-(S @ c).T), 0, 255).round().astype(np.uint8).reshape(*shape, 3)


def pyramid_slide(path, stains=(H_OD, E_OD), size=256, seed=0):
    "A tiled, 3-level pyramidal TIFF (what openslide reads as 'generic-tiff'): an H&E-like tissue disc on white."
    import tifffile
    yy, xx = np.mgrid[:size, :size]
    img = np.full((size, size, 3), 250, np.uint8)
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.43 * size) ** 2
    img[disc] = he_rgb((size, size), stains, seed)[disc]
    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path) as t:
        for k in range(3):
            t.write(np.ascontiguousarray(img[::2 ** k, ::2 ** k]), tile=(64, 64), photometric='rgb', compression='zlib',
                    subfiletype=1 if k else 0)
    return img


def test_camelyon16_openslide_pyramid_and_macenko(tmp_path):
    """Tiled pyramidal TIFFs go through openslide (levels, exact level-0 regions), and Macenko normalisation gives the
    prepared patches the stain vectors of the reference tile."""
    osl = pytest.importorskip('openslide'); pytest.importorskip('tifffile')
    from PIL import Image
    from uad_notebooks.prepare import macenko_stains
    cam = script('camelyon16')
    raw, box = tmp_path / 'raw', (96, 160, 96, 160)
    src_stains = (np.array([0.45, 0.55, 0.70]), np.array([0.25, 0.75, 0.61]))   # another lab's colours
    img = pyramid_slide(raw / 'training' / 'normal' / 'normal_001.tif', src_stains, seed=1)
    pyramid_slide(raw / 'training' / 'tumor' / 'tumor_001.tif', src_stains, seed=2)
    asap_xml(raw / 'training' / 'lesion_annotations' / 'tumor_001.xml', box)
    pyramid_slide(raw / 'testing' / 'images' / 'test_001.tif', src_stains, seed=3)
    (raw / 'testing' / 'reference.csv').write_text('test_001,Normal\n')
    sl = cam.Slide(raw / 'training' / 'normal' / 'normal_001.tif')
    assert sl.reader == 'openslide' and sl.s.level_count == 3 and sl.size == (256, 256)
    assert (sl.region(70, 90, 40, 24) == img[90:114, 70:110]).all()
    assert sl.thumbnail(16).shape == (16, 16, 3)
    target = he_rgb((64, 64), (H_OD, E_OD), seed=9)
    Image.fromarray(target).save(tmp_path / 'target.png')
    args = ['--patch-size', 48, '--out-size', 48, '--per-slide', 3, '--split-variant', 'generated']
    rows, prov = prepare_and_check('camelyon16', raw, tmp_path / 'norm', *args, '--stain-norm', 'macenko',
                                   '--stain-target', tmp_path / 'target.png')
    assert {(r['split'], r['label']) for r in rows} == {('train', '0'), ('val', '1'), ('test', '0')}
    assert any(st['name'] == 'read slides' and st['reader'] == ['openslide'] for st in prov['steps'])
    assert any(st['name'] == 'stain normalisation' for st in prov['steps'])
    cos = lambda a, b: float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
    want, _ = macenko_stains(target)
    patch = np.asarray(Image.open(tmp_path / 'norm' / rows[0]['image']).convert('RGB'))
    got, _ = macenko_stains(patch)
    assert min(cos(got[:, 0], want[:, 0]), cos(got[:, 1], want[:, 1])) > 0.99
    rows2, prov2 = prepare_and_check('camelyon16', raw, tmp_path / 'plain', *args, '--stain-norm', 'none')
    raw_patch = np.asarray(Image.open(tmp_path / 'plain' / rows2[0]['image']).convert('RGB'))
    before, _ = macenko_stains(raw_patch)
    assert cos(before[:, 1], src_stains[1]) > 0.99 and cos(before[:, 1], want[:, 1]) < 0.97   # it did change colour
    with pytest.raises(FileNotFoundError, match='stain-target'):
        run('camelyon16', 'prepare', '--raw-dir', raw, '--out-dir', tmp_path / 'x', *args, '--stain-norm', 'macenko')


# Vahadane stain normalisation (uad_notebooks.prepare.vahadane_stains / VahadaneNormalizer)
VH_H, VH_E = np.array([0.65, 0.70, 0.29]), np.array([0.07, 0.99, 0.11])   # haematoxylin, a pale-red-absorbing eosin


def unit_cos(a, b): return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def sparse_he(n, stains, seed, background=0.2):
    """(rgb (n, n, 3) uint8, true concentrations (n*n, 2)): Beer-Lambert with random sparse non-negative
    concentrations (H only, E only, or both) and a white background band (the top `background` of the rows)."""
    g = np.random.default_rng(seed); k = n * n
    S = np.stack([v / np.linalg.norm(v) for v in stains], 1)
    c = g.gamma(2.0, 0.35, (k, 2))                                   # non-negative, mean 0.7
    kind = g.choice(3, k, p=[0.35, 0.35, 0.3])                       # 0: H only, 1: E only, 2: both
    c[kind == 0, 1] = 0; c[kind == 1, 0] = 0
    c[: int(background * n) * n] = 0                                 # background rows: no stain
    rgb = np.clip(255 * np.exp(-c @ S.T), 0, 255).round().astype(np.uint8).reshape(n, n, 3)
    return rgb, c


def test_vahadane_recovers_known_stains():
    """The stain vectors of a tile made from known stains come back, haematoxylin first (several seeds), and the
    vectorised solver finds the same stains as scikit-learn's DictionaryLearning."""
    from uad_notebooks.prepare import vahadane_stains, macenko_stains
    for seed in range(3):
        rgb, _ = sparse_he(96, (VH_H, VH_E), seed)
        S, max_conc = vahadane_stains(rgb)
        assert S.shape == (3, 2) and np.allclose(np.linalg.norm(S, axis=0), 1) and (S >= 0).all()
        assert unit_cos(S[:, 0], VH_H) > 0.995 and unit_cos(S[:, 1], VH_E) > 0.995, S
        assert (max_conc > 0).all()
        again, _ = vahadane_stains(rgb)
        assert np.array_equal(again, S)                                # seeded: deterministic
    rgb, _ = sparse_he(64, (VH_E, VH_H), 5)                           # stains given in the wrong order: still H first
    assert unit_cos(vahadane_stains(rgb)[0][:, 0], VH_H) > 0.995
    sk, _ = vahadane_stains(rgb, n_pixels=800, solver='sklearn')
    ex, _ = vahadane_stains(rgb, n_pixels=800)
    assert min(unit_cos(sk[:, 0], ex[:, 0]), unit_cos(sk[:, 1], ex[:, 1])) > 0.999


def test_vahadane_normalisation_to_target():
    """A tile from another lab's stains, normalised toward a target, gets the target's stain vectors and
    concentration range and keeps its own concentration structure."""
    from uad_notebooks.prepare import VahadaneNormalizer, rgb_to_od, stain_concentrations, vahadane_stains
    target, _ = sparse_he(96, (VH_H, VH_E), 0)
    src_stains = (np.array([0.45, 0.55, 0.70]), np.array([0.25, 0.75, 0.61]))
    source, c_true = sparse_he(96, src_stains, 1)
    c_true = c_true * (0.6, 1.5)                                      # and a different staining strength
    S_src = np.stack([v / np.linalg.norm(v) for v in src_stains], 1)
    source = np.clip(255 * np.exp(-c_true @ S_src.T), 0, 255).round().astype(np.uint8).reshape(96, 96, 3)
    norm = VahadaneNormalizer().fit(target)
    assert unit_cos(norm.stains[:, 0], VH_H) > 0.995 and unit_cos(norm.stains[:, 1], VH_E) > 0.995
    out = norm.transform(source)
    assert out.shape == source.shape and out.dtype == np.uint8
    got, got_max = vahadane_stains(out)
    for j in range(2):
        assert unit_cos(got[:, j], norm.stains[:, j]) > 0.99               # the target's stains ...
        assert unit_cos(got[:, j], S_src[:, j]) < 0.97                     # ... not the source's
    assert np.allclose(got_max, norm.max_conc, rtol=0.1)                # and its concentration range
    c_out = stain_concentrations(rgb_to_od(out.reshape(-1, 3)), norm.stains)
    for j in range(2):
        assert np.corrcoef(c_out[:, j], c_true[:, j])[0, 1] > 0.95       # structure preserved
    assert (out.reshape(-1, 3)[: 19 * 96] >= 250).all()                 # background stays white
    assert np.abs(norm.transform(target).astype(int) - target).mean() < 2  # the target maps (almost) to itself


def test_vahadane_rejects_background_and_single_colour():
    from uad_notebooks.prepare import VahadaneNormalizer, vahadane_stains
    with pytest.raises(ValueError, match='background'):
        vahadane_stains(np.full((32, 32, 3), 245, np.uint8))
    with pytest.raises(ValueError, match='single colour'):
        vahadane_stains(np.full((32, 32, 3), (150, 60, 160), np.uint8))
    with pytest.raises(ValueError, match='must be'):
        vahadane_stains(np.zeros((32, 32), np.uint8))
    with pytest.raises(RuntimeError, match='fit'):
        VahadaneNormalizer().transform(sparse_he(16, (VH_H, VH_E), 0)[0])
    rgb, _ = sparse_he(32, (VH_H, VH_E), 0, background=0.97)           # one row of tissue only (32 px < 50)
    with pytest.raises(ValueError, match='background'):
        VahadaneNormalizer().fit(rgb)


def he_tiff(path, stains, size=192, seed=0):
    "A small plain (single-level) TIFF with an H&E-like disc on white (read by PIL, or by openslide if it can)."
    from PIL import Image
    yy, xx = np.mgrid[:size, :size]
    img = np.full((size, size, 3), 248, np.uint8)
    disc = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.45 * size) ** 2
    img[disc] = sparse_he(size, stains, seed, background=0)[0].reshape(-1, 3)[disc.ravel()]
    path.parent.mkdir(parents=True, exist_ok=True); Image.fromarray(img).save(path)


def test_camelyon16_vahadane_is_the_default_with_a_reference(tmp_path):
    """`--stain-norm auto` with a reference runs Vahadane: provenance names it (and no longer skips it), and the
    prepared patches carry the reference's stain vectors; `--stain-norm vahadane` without a reference is an error."""
    from PIL import Image
    from uad_notebooks.prepare import vahadane_stains
    raw, box = tmp_path / 'raw', (48, 144, 48, 144)
    src = (np.array([0.45, 0.55, 0.70]), np.array([0.25, 0.75, 0.61]))
    he_tiff(raw / 'training' / 'normal' / 'normal_001.tif', src, seed=1)
    he_tiff(raw / 'training' / 'tumor' / 'tumor_001.tif', src, seed=2)
    asap_xml(raw / 'training' / 'lesion_annotations' / 'tumor_001.xml', box)
    he_tiff(raw / 'testing' / 'images' / 'test_001.tif', src, seed=3)
    (raw / 'testing' / 'reference.csv').write_text('test_001,Normal\n')
    target, _ = sparse_he(64, (VH_H, VH_E), 9, background=0)
    Image.fromarray(target).save(tmp_path / 'target.png')
    args = ['--patch-size', 40, '--out-size', 40, '--per-slide', 2, '--split-variant', 'generated']
    rows, prov = prepare_and_check('camelyon16', raw, tmp_path / 'out', *args, '--stain-target', tmp_path / 'target.png')
    step = [st for st in prov['steps'] if st['name'] == 'stain normalisation']
    assert len(step) == 1 and step[0]['method'] == 'vahadane' and 'Vahadane' in step[0]['description']
    assert step[0]['params']['lambda_'] == 0.1 and step[0]['target'] == str(tmp_path / 'target.png')
    assert not any(s['tool'].startswith('Vahadane') for s in prov['skipped'])
    want, _ = vahadane_stains(target)
    for r in rows:
        got, _ = vahadane_stains(np.asarray(Image.open(tmp_path / 'out' / r['image']).convert('RGB')))
        assert min(unit_cos(got[:, 0], want[:, 0]), unit_cos(got[:, 1], want[:, 1])) > 0.99, r['image']
    _, prov_m = prepare_and_check('camelyon16', raw, tmp_path / 'mac', *args, '--stain-norm', 'macenko',
                                  '--stain-target', tmp_path / 'target.png')
    assert [st['method'] for st in prov_m['steps'] if st['name'] == 'stain normalisation'] == ['macenko']
    assert any(s['tool'].startswith('Vahadane') and 'macenko' in s['reason'] for s in prov_m['skipped'])
    with pytest.raises(FileNotFoundError, match='stain-target'):
        run('camelyon16', 'prepare', '--raw-dir', raw, '--out-dir', tmp_path / 'x', *args, '--stain-norm', 'vahadane')


def test_every_script_has_help():
    from uad_notebooks.data import INTENSITY
    for n in NAMES:
        s = script(n).SCRIPT
        assert s.name == n and s.licence and s.citation and s.disk and n in INTENSITY
        assert s.resources or s.manual, f'{n}: neither an automated download nor a manual step'
    r = subprocess.run([sys.executable, str(SCRIPTS / 'ixi.py'), 'prepare', '--help'], capture_output=True, text=True)
    assert r.returncode == 0 and '--split-variant' in r.stdout and '--crop-shape' in r.stdout


# ------------------------------------------------------------------------------------ pDDPM chain, real anatomy
def ramp_biased_mni152(raw, subject, spacing=1.2):
    """nilearn's MNI152 T1 template (skull-stripped; shipped with nilearn, never downloaded) at 2 mm, its voxels
    written with a `spacing` mm voxel size (a real brain scaled to 60 %, so that the chain's 1 mm grid stays small and
    the test fast) and multiplied by a smooth bias field, a linear ramp 0.7 -> 1.3 along x (left -> right), as
    raw/<subject>-T2.nii.gz; its white-matter mask (nilearn's WM template > 0.5, same grid) goes to raw/../wm.nii.gz.
    Returns (biased volume, WM mask) as written."""
    from nilearn.datasets import load_mni152_template, load_mni152_wm_template
    t1 = np.clip(np.asarray(load_mni152_template(resolution=2).dataobj, np.float32), 0, None)
    wm = np.asarray(load_mni152_wm_template(resolution=2).dataobj, np.float32) > 0.5
    vol = t1 * np.linspace(0.7, 1.3, t1.shape[0], dtype=np.float32)[:, None, None]
    nifti(raw / f'{subject}-T2.nii.gz', vol, zooms=(spacing,) * 3)
    nifti(raw.parent / 'wm.nii.gz', wm.astype(np.uint8), zooms=(spacing,) * 3)
    return vol, wm


def ramp_corr(vol, mask):
    "Correlation, inside `mask`, between the intensity and the x coordinate (the bias ramp's axis)."
    x = np.broadcast_to(np.arange(vol.shape[0], dtype=np.float32)[:, None, None], vol.shape)
    return float(np.corrcoef(vol[mask], x[mask])[0, 1])


def test_pddpm_chain_on_mni152(tmp_path):
    """The IXI chain end to end on real anatomy (the MNI152 T1 brain with 1.2 mm voxels and a 0.7 -> 1.3 bias
    ramp): `ixi.py prepare` and `check` give a 96x96x50 volume in [0, 1], brain 1st/99th percentiles near 0/1, a
    plausible brain mask; N4 removes the ramp (white-matter intensity no longer follows x), which the same chain
    without N4 does not; the provenance records the skipped HD-BET and ANTs and the N4 step."""
    pytest.importorskip('SimpleITK', reason='SimpleITK (extra `data`) runs N4 and CurvatureFlow; '
                                            'without it the chain skips both')
    import argparse, nibabel as nib
    from _pddpm import Chain
    from uad_notebooks.prepare import Provenance
    raw, sp, s = tmp_path / 'raw', tmp_path / 'raw' / 'splits', 'IXI002-Guys-0828'
    vol, wm = ramp_biased_mni152(raw, s)
    corr_in = ramp_corr(vol, wm)
    for name in ('IXI_train_fold0.csv', 'IXI_val_fold0.csv'):             # listed, but no T2 file: skipped, noted
        pddpm_csv(sp / name, ['IXI012-HH-1211_t1.nii.gz'], '/Train/ixi/t1')
    pddpm_csv(sp / 'IXI_test.csv', [f'{s}_t1.nii.gz'], '/Train/ixi/t1')
    # the default chain (192x192x100 at 1 mm, 2 mm out), N4 fitted on a 3x shrunk volume: on this 60 % brain that
    # keeps about as many voxels per axis (29-36) as the default 4x does on an adult brain (36-45)
    rows, prov = prepare_and_check('ixi', raw, tmp_path / 'out', '--n4-shrink', 3, '--own-splits')
    assert {r['split'] for r in rows} == {'test'} and len(rows) == 50
    assert any('no T2 file' in n for n in prov['notes'])
    img = np.asarray(nib.load(str(tmp_path / 'out' / rows[0]['image'])).dataobj)
    brain = np.asarray(nib.load(str(tmp_path / 'out' / rows[0]['brain'])).dataobj) > 0
    assert img.shape == brain.shape == (96, 96, 50) and img.dtype == np.float32
    assert img.min() >= 0 and img.max() <= 1 and (img[~brain] == 0).all()
    p1, p50, p99 = np.percentile(img[brain], [1, 50, 99])
    assert p1 < 0.05 and p99 > 0.95 and 0.3 < p50 < 0.9, (p1, p50, p99)
    assert 0.08 < brain.mean() < 0.15, brain.mean()                         # the 60 % brain, padded to 192x192x100 mm
    # the same chain without N4, carrying the WM mask as a label volume onto the output grid
    ref = Chain(Provenance('t', 't'), argparse.Namespace(crop_shape=[192, 192, 100], out_spacing=2.0, no_n4=True),
                resample_1mm=True, skull_strip='hd-bet')
    no_n4, brain_ref, wm_out = ref(raw / f'{s}-T2.nii.gz', tmp_path / 'wm.nii.gz')
    assert np.array_equal(brain_ref > 0, brain)                             # same geometry as the script's output
    wm_out = (wm_out > 0) & brain
    assert wm_out.sum() > 0.1 * brain.sum()
    corr_no_n4, corr_out = ramp_corr(no_n4, wm_out), ramp_corr(img, wm_out)
    thirds = np.array_split(np.nonzero(wm_out.any((1, 2)))[0], 3)          # WM mean in the left and right thirds
    lr = lambda v: float(v[thirds[2]][wm_out[thirds[2]]].mean() / v[thirds[0]][wm_out[thirds[0]]].mean())
    print(f'WM intensity vs x: corr input {corr_in:.3f}, chain without N4 {corr_no_n4:.3f}, with N4 {corr_out:.3f}; '
          f'right/left WM ratio {lr(no_n4):.3f} -> {lr(img):.3f}; brain p1/p50/p99 {p1:.3f}/{p50:.3f}/{p99:.3f}, '
          f'brain fraction {brain.mean():.3f}')
    assert corr_in > 0.8 and corr_no_n4 > 0.7                               # the ramp dominates WM intensity ...
    assert abs(corr_out) < 0.15 and abs(corr_out) < corr_no_n4 / 5          # ... until N4 removes it
    assert lr(no_n4) > 1.3 and abs(lr(img) - 1) < 0.05
    skipped = {k['tool'] for k in prov['skipped']}
    assert 'HD-BET' in skipped and 'ANTs registration to SRI24' in skipped and 'N4 bias correction' not in skipped
    n4 = [st for st in prov['steps'] if st['name'] == 'N4']
    assert len(n4) == 1 and n4[0]['iterations'] == '4 x 200' and n4[0]['shrink_factor'] == 3
    assert n4[0]['mask'] == 'brain'
    assert any(st['name'] == 'CurvatureFlow' for st in prov['steps'])


def test_pddpm_chain_rejects_mask_or_seg_of_another_shape(tmp_path):
    """A brain mask (MSLUB --use-brainmask) or a segmentation whose grid differs from the image's is a clear
    ValueError naming the file, not a silently misaligned crop."""
    import argparse
    from _pddpm import Chain
    from uad_notebooks.prepare import Provenance
    raw = tmp_path / 'raw'
    s = 'patient01'
    img, seg = head((20, 20, 14), lesion=(slice(8, 11), slice(8, 11), slice(4, 8)))
    nifti(raw / s / 'raw' / f'{s}_T2W.nii.gz', img); nifti(raw / s / f'{s}_consensus_gt.nii.gz', seg)
    nifti(raw / s / f'{s}_brainmask.nii.gz', np.ones((20, 20, 12), np.uint8))
    with pytest.raises(ValueError, match=rf'{s}_brainmask\.nii\.gz: shape \(20, 20, 12\) differs from image'):
        run('mslub', 'prepare', '--raw-dir', raw, '--out-dir', tmp_path / 'o', '--split-variant', 'generated',
            '--use-brainmask', *CHAIN)
    nifti(tmp_path / 'seg.nii.gz', seg[:, :, :10])
    chain = Chain(Provenance('t', 't'), argparse.Namespace(crop_shape=[24, 24, 16], out_spacing=2.0, no_n4=True),
                  resample_1mm=True, skull_strip='hd-bet')
    with pytest.raises(ValueError, match=r'seg\.nii\.gz: shape \(20, 20, 10\) differs from image'):
        chain(raw / s / 'raw' / f'{s}_T2W.nii.gz', tmp_path / 'seg.nii.gz')
    assert chain(raw / s / 'raw' / f'{s}_T2W.nii.gz', raw / s / f'{s}_consensus_gt.nii.gz')[2].sum() > 0


# ------------------------------------------------------------------------- the intensity contract, per dataset
# A fabricated raw file with known values goes through `prepare` and `load_dataset` (default normalize='auto'); the
# loaded values must be the official formula of each paper's code applied to the stored values, with nothing computed
# per image (the formulas are written out here, not read from the package's table).
def contract_of(name, out, ds):
    "The recorded contract: in provenance.json, equal to the package's table, and applied by the loader."
    from uad_notebooks.data import INTENSITY
    prov = json.loads((Path(out) / 'provenance.json').read_text())
    assert prov['intensity'] == INTENSITY[name] and ds.intensity['contract_applied']
    assert {k: ds.intensity[k] for k in INTENSITY[name]} == INTENSITY[name] and ds.intensity['applied']
    return prov['intensity']['name']


def test_intensity_brats2020_loads_the_stored_values_unchanged(tmp_path):
    """Georgescu reads channel 0 of the Kaggle arrays as they are (mean 0, std 1): values outside [0, 1] and an almost
    empty slice load unchanged (a per-slice min-max would stretch both)."""
    h5py = pytest.importorskip('h5py')
    raw, out = tmp_path / 'raw', tmp_path / 'out'; fab_brats2020(raw)
    d = raw / 'BraTS2020_training_data' / 'content' / 'data'
    with h5py.File(d / 'volume_4_slice_0.h5', 'r+') as f:                         # a near-empty top slice of the test volume
        img = np.zeros((16, 16, 4)); img[7:9, 7:9, 0] = 0.03; img[..., 1] = 5.0; del f['image']; f['image'] = img
    assert run('brats2020', 'prepare', '--raw-dir', raw, '--out-dir', out, '--own-splits') == 0
    from uad_notebooks.data import load_dataset
    ds = load_dataset('brats2020', 'test', data_dir=out, img_size=16)
    rows = [r for r in csv.DictReader(open(out / 'manifest.csv')) if r['split'] == 'test']
    for i, r in enumerate(rows):
        v, s = map(int, re.search(r'volume_(\d+)_slice_(\d+)', r['image']).groups())
        with h5py.File(d / f'volume_{v}_slice_{s}.h5', 'r') as f: want = np.asarray(f['image'])[..., 0].astype(np.float32)
        assert np.array_equal(ds.images[i, 0].numpy(), want), r['image']           # x, channel 0, unchanged
    assert float(ds.images.min()) < -1 and float(ds.images.max()) > 1                # not squeezed into [0, 1]
    empty = next(i for i, r in enumerate(rows) if r['image'].endswith('volume_4_slice_0.npy'))
    assert float(ds.images[empty].max()) == pytest.approx(0.03)                       # not stretched to 1
    assert contract_of('brats2020', out, ds) == 'as_stored'


def test_intensity_luna16_loads_hu_over_100_whatever_the_crop_holds(tmp_path):
    """A 40 HU nodule loads as 0.4 (Georgescu's HU / 100) in a crop of air and in a crop with bone beside it."""
    raw, uid = tmp_path / 'raw', '1.3.6.1.4.1.14519.5.2.1.6279.6001.{}'
    cands = []
    for k, other in enumerate((-1000, 1500)):                         # scan 1 has a 1500 HU 'bone' block in the crop
        vol = np.full((6, 32, 32), -1000, np.int16); vol[2:4, 14:18, 14:18] = 40; vol[2:4, 2:8, 2:8] = other
        write_mhd(raw / f'subset{k}' / f'{uid.format(k)}.mhd', vol, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
        cands += [[uid.format(k), 16.0, 16.0, 2.0, 1], [uid.format(k), 24.0, 24.0, 3.0, 0]]
    write_csv(raw / 'candidates.csv', ['seriesuid', 'coordX', 'coordY', 'coordZ', 'class'], cands)
    sp = raw / 'splits'; sp.mkdir()
    for f, rows in {'normal_training_samples.txt': [1], 'normal_val_samples.txt': [3], 'abnormal_val_samples.txt': [0],
                    'normal_test_samples.txt': [3], 'abnormal_test_samples.txt': [0, 2]}.items():
        (sp / f).write_text(''.join(f'{r}.npy\n' for r in rows))
    out = tmp_path / 'out'
    assert run('luna16', 'prepare', '--raw-dir', raw, '--out-dir', out, '--crop-size', 24, '--own-splits') == 0
    from uad_notebooks.data import load_dataset
    ds = load_dataset('luna16', 'test', data_dir=out, img_size=24)
    rows = [r for r in csv.DictReader(open(out / 'manifest.csv')) if r['split'] == 'test']
    stored = [np.load(out / r['image']) for r in rows]
    for i, a in enumerate(stored): assert np.allclose(ds.images[i, 0].numpy(), a / 100, atol=1e-6)
    nodules = [i for i, r in enumerate(rows) if r['label'] == '1']
    assert [float(stored[i][12, 12]) for i in nodules] == [40.0, 40.0]                      # HU as stored ...
    assert sorted(float(stored[i].max()) for i in nodules) == [40.0, 1500.0]                # ... beside air, beside bone
    assert [float(ds.images[i, 0, 12, 12]) for i in nodules] == pytest.approx([0.4, 0.4])   # the same value loaded
    assert contract_of('luna16', out, ds) == 'hu_div_100'


def test_intensity_nih_cxr14_loads_uint8_as_minus_one_to_one(tmp_path):
    """DPA: 8-bit grey PNGs are kept as 8-bit values by prepare and load as ToTensor + Normalize(0.5, 0.5) = x*2/255-1."""
    from PIL import Image
    raw = tmp_path / 'raw'; (raw / 'images').mkdir(parents=True)
    entries = []
    for i in range(4):
        name = f'{i:08d}_000.png'
        a = np.full((320, 320), 60, np.uint8); a[:, 160:] = 200 - 20 * i
        Image.fromarray(a).save(raw / 'images' / name)
        entries.append([name, 'No Finding' if i % 2 else 'Effusion', 0, i, 50, 'M', 'PA', 320, 320, 0.14, 0.14])
    write_csv(raw / 'Data_Entry_2017.csv', ['Image Index', 'Finding Labels', 'Follow-up #', 'Patient ID', 'Patient Age',
              'Patient Gender', 'View Position', 'OriginalImage[Width', 'Height]', 'OriginalImagePixelSpacing[x', 'y]'], entries)
    (raw / 'train_val_list.txt').write_text(''); (raw / 'test_list.txt').write_text(''.join(e[0] + '\n' for e in entries))
    out = tmp_path / 'out'
    assert run('nih_cxr14', 'prepare', '--raw-dir', raw, '--out-dir', out, '--split-variant', 'generated') == 0
    from uad_notebooks.data import load_dataset
    ds = load_dataset('nih_cxr14', 'test', data_dir=out, img_size=64)
    rows = [r for r in csv.DictReader(open(out / 'manifest.csv')) if r['split'] == 'test']
    for i, r in enumerate(rows):
        x = np.asarray(Image.open(out / r['image'])).astype(np.float64)
        assert x[:, 0].tolist() == [60.0] * 64 and x.max() == 200 - 20 * int(Path(r['image']).name[:8])    # 8-bit values as saved
        assert np.allclose(ds.images[i, 0].numpy(), x * 2 / 255 - 1, atol=1e-6)
    assert float(ds.images.min()) == pytest.approx(60 * 2 / 255 - 1)
    assert contract_of('nih_cxr14', out, ds) == 'uint8_to_pm1'


def test_intensity_camelyon16_keeps_colour_and_maps_each_channel(tmp_path):
    """DPA's Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)) per RGB channel: a pink tissue pixel (220, 140, 200) loads as
    (220, 140, 200) * 2/255 - 1 with in_chans=3 (a joint min-max over the patch would not)."""
    raw, box = tmp_path / 'raw', (48, 144, 48, 144)
    for n in ('normal_001', 'normal_002'): wsi(raw / 'training' / 'normal' / f'{n}.tif')
    wsi(raw / 'training' / 'tumor' / 'tumor_001.tif', box); asap_xml(raw / 'training' / 'lesion_annotations' / 'tumor_001.xml', box)
    wsi(raw / 'testing' / 'images' / 'test_001.tif', box); wsi(raw / 'testing' / 'images' / 'test_002.tif')
    (raw / 'testing' / 'reference.csv').write_text('test_001,Tumor\ntest_002,Normal\n')
    out = tmp_path / 'out'
    assert run('camelyon16', 'prepare', '--raw-dir', raw, '--out-dir', out, '--patch-size', 16, '--out-size', 16,
               '--per-slide', 2, '--split-variant', 'generated', '--stain-norm', 'none') == 0
    from PIL import Image
    from uad_notebooks.data import load_dataset
    ds = load_dataset('camelyon16', 'test', data_dir=out, img_size=16, in_chans=3)
    rows = [r for r in csv.DictReader(open(out / 'manifest.csv')) if r['split'] == 'test']
    assert ds.images.shape[1] == 3
    for i, r in enumerate(rows):
        x = np.asarray(Image.open(out / r['image']).convert('RGB')).astype(np.float64).transpose(2, 0, 1)
        assert np.allclose(ds.images[i].numpy(), x * 2 / 255 - 1, atol=1e-6)
    normal = next(i for i, r in enumerate(rows) if r['label'] == '0')
    assert np.allclose(ds.images[normal, :, 8, 8].numpy(), np.array([220, 140, 200]) * 2 / 255 - 1, atol=1e-6)
    assert contract_of('camelyon16', out, ds) == 'uint8_to_pm1'


def test_intensity_hyper_kvasir_keeps_colour_and_divides_by_255(tmp_path):
    """Our choice for MemMC-MAE's data (the paper states none): 8-bit RGB stored as saved, loaded per channel as x / 255;
    a flat orange frame stays orange (a per-image min-max would make it black)."""
    raw = tmp_path / 'raw'; L = raw / 'labeled-images'
    for i in range(6):
        jpeg(L / 'lower-gi-tract' / 'anatomical-landmarks' / 'cecum' / f'n{i:04d}.jpg', np.full((24, 24, 3), (200, 100, 50)))
    for i in range(3):
        jpeg(L / 'lower-gi-tract' / 'pathological-findings' / 'polyps' / f'p{i:04d}.jpg', np.full((24, 24, 3), (90, 40, 160)))
    out = tmp_path / 'out'
    assert run('hyper_kvasir', 'prepare', '--raw-dir', raw, '--out-dir', out, '--img-size', 24) == 0
    from PIL import Image
    from uad_notebooks.data import load_dataset
    ds = load_dataset('hyper_kvasir', 'test', data_dir=out, img_size=24, in_chans=3)
    rows = [r for r in csv.DictReader(open(out / 'manifest.csv')) if r['split'] == 'test']
    for i, r in enumerate(rows):
        x = np.asarray(Image.open(out / r['image'])).astype(np.float64).transpose(2, 0, 1)
        assert np.allclose(ds.images[i].numpy(), x / 255, atol=1e-6)
        want = (200, 100, 50) if r['label'] == '0' else (90, 40, 160)
        assert np.abs(x.mean((1, 2)) - want).max() < 3, (r['image'], x.mean((1, 2)))     # JPEG round trip only
    assert contract_of('hyper_kvasir', out, ds) == 'uint8_to_unit'


def test_intensity_rsna_pneumonia_stores_the_dicom_values(tmp_path):
    """RSNA's DICOMs are 8-bit: prepare stores their pixel values (no per-image stretch) and the loader divides by 255;
    a DICOM with values outside 0..255 is refused."""
    raw = tmp_path / 'raw'
    pids = [f'{i:08x}-0000-4000-8000-000000000000' for i in range(6)]
    classes = ['Normal'] * 4 + ['Lung Opacity'] * 2
    for k, p in enumerate(pids):
        a = np.full((32, 32), 30 + k, np.uint8); a[:, 16:] = 180
        write_dicom(raw / 'stage_2_train_images' / f'{p}.dcm', a)
    write_csv(raw / 'stage_2_train_labels.csv', ['patientId', 'x', 'y', 'width', 'height', 'Target'],
              [[p, 2, 2, 8, 8, 1] if c == 'Lung Opacity' else [p, '', '', '', '', 0] for p, c in zip(pids, classes)])
    write_csv(raw / 'stage_2_detailed_class_info.csv', ['patientId', 'class'], list(zip(pids, classes)))
    out = tmp_path / 'out'
    assert run('rsna_pneumonia', 'prepare', '--raw-dir', raw, '--out-dir', out, '--img-size', 32) == 0
    from PIL import Image
    from uad_notebooks.data import load_dataset
    ds = load_dataset('rsna_pneumonia', 'test', data_dir=out, img_size=32)
    rows = [r for r in csv.DictReader(open(out / 'manifest.csv')) if r['split'] == 'test']
    for i, r in enumerate(rows):
        x = np.asarray(Image.open(out / r['image'])).astype(np.float64)
        k = pids.index(r['subject'])
        assert x[:, :16].tolist() == [[30 + k] * 16] * 32 and (x[:, 16:] == 180).all()   # the DICOM's values
        assert np.allclose(ds.images[i, 0].numpy(), x / 255, atol=1e-6)
    write_dicom(raw / 'stage_2_train_images' / f'{pids[0]}.dcm', np.zeros((32, 32)))
    from pydicom import dcmread
    dcm = dcmread(raw / 'stage_2_train_images' / f'{pids[0]}.dcm'); dcm.RescaleSlope = 10; dcm.RescaleIntercept = 0
    dcm.PixelData = np.full((32, 32), 100, np.uint8).tobytes(); dcm.save_as(raw / 'stage_2_train_images' / f'{pids[0]}.dcm')
    with pytest.raises(ValueError, match='not 8-bit'):
        run('rsna_pneumonia', 'prepare', '--raw-dir', raw, '--out-dir', tmp_path / 'o2', '--img-size', 32)
    assert contract_of('rsna_pneumonia', out, ds) == 'uint8_to_unit'


def test_intensity_covid_cxr_stores_values_as_saved(tmp_path):
    """COVIDx images: 8-bit values stored as saved, 16-bit ones scaled by 255/65535 (no per-image stretch); loaded / 255."""
    from PIL import Image
    raw = tmp_path / 'raw'
    lines = {'train': [], 'test': []}
    for i in range(8):
        split = 'train' if i < 4 else 'test'
        (raw / split).mkdir(parents=True, exist_ok=True)
        if i == 7: Image.fromarray(np.full((16, 16), 65535 * 100 // 255, np.uint16)).save(raw / split / f'img_{i}.png')
        else: Image.fromarray(np.full((16, 16), 40 + 10 * i, np.uint8)).save(raw / split / f'img_{i}.png')
        lines[split].append(f'P{i} img_{i}.png {"positive" if i in (5, 7) else "negative"} src')
    for s, l in lines.items(): (raw / f'{s}.txt').write_text('\n'.join(l) + '\n')
    out = tmp_path / 'out'
    assert run('covid_cxr', 'prepare', '--raw-dir', raw, '--out-dir', out, '--img-size', 16, '--val-frac', 0.25) == 0
    from uad_notebooks.data import load_dataset
    ds = load_dataset('covid_cxr', 'test', data_dir=out, img_size=16)
    rows = [r for r in csv.DictReader(open(out / 'manifest.csv')) if r['split'] == 'test']
    want = {f'images/test/img_{i}.png': 40 + 10 * i for i in range(4, 7)} | {'images/test/img_7.png': 100}
    assert sorted(r['image'] for r in rows) == sorted(want)
    for i, r in enumerate(rows):
        x = np.asarray(Image.open(out / r['image'])).astype(np.float64)
        assert (x == want[r['image']]).all(), r['image']
        assert np.allclose(ds.images[i, 0].numpy(), x / 255, atol=1e-6)
    assert contract_of('covid_cxr', out, ds) == 'uint8_to_unit'


PDDPM_SUBJECTS = {  # subjects named in the published (shipped, pinned) lists, so the default faithful split applies
    'ixi': {'train': 'IXI076-Guys-0753', 'val': 'IXI357-HH-2076', 'test': 'IXI105-HH-1471'},
    'brats2021': {'val': 'BraTS2021_01122', 'test': 'BraTS2021_00538'},
    'mslub': {'val': 'patient29', 'test': 'patient13'}}


def fab_pddpm(name, raw):
    "One fabricated raw volume per split, named as the published lists name them (the raw layout of each dataset)."
    for split, s in PDDPM_SUBJECTS[name].items():
        img, seg = head((20, 20, 14), lesion=(slice(8, 11), slice(8, 11), slice(4, 8)))
        if name == 'ixi': nifti(raw / f'{s}-T2.nii.gz', img, zooms=(1.2, 1.2, 1.5))
        elif name == 'brats2021':
            img[img < 50] = 0
            for m in ('t2', 'seg'): nifti(raw / 'BraTS2021_Training_Data' / s / f'{s}_{m}.nii.gz', img if m == 't2' else seg)
        else:
            nifti(raw / s / 'raw' / f'{s}_T2W.nii.gz', img); nifti(raw / s / f'{s}_consensus_gt.nii.gz', seg)


@pytest.mark.parametrize('name', ['ixi', 'brats2021', 'mslub'])
def test_intensity_pddpm_chain_loads_the_prepared_volumes_unchanged(name, tmp_path):
    """IXI / BraTS21 / MSLUB: prepare did pDDPM's per-volume 1-99 percentile scaling to [0, 1]; every loaded slice is
    exactly the prepared volume's slice (no second, per-slice rescaling). The split comes from the shipped, pinned
    published lists."""
    raw, out = tmp_path / 'raw', tmp_path / 'out'; fab_pddpm(name, raw)
    assert run(name, 'prepare', '--raw-dir', raw, '--out-dir', out, *CHAIN) == 0
    prov = json.loads((out / 'provenance.json').read_text())
    assert all(v['check'] == 'pinned in the repository' for v in prov['split_files'].values()) and prov['split_files']
    from uad_notebooks.data import load_dataset, read_nifti
    ds = load_dataset(name, 'test', data_dir=out, img_size=12)
    rows = [r for r in csv.DictReader(open(out / 'manifest.csv')) if r['split'] == 'test']
    assert {r['subject'] for r in rows} == {PDDPM_SUBJECTS[name]['test']}
    vol = read_nifti(out / rows[0]['image'])
    assert vol.min() >= 0 and vol.max() <= 1 and vol.max() > 0.99                       # [0, 1] per volume
    for i, r in enumerate(rows): assert np.array_equal(ds.images[i, 0].numpy(), vol[..., int(r['slice'])]), r['slice']
    peaks = [float(vol[..., z].max()) for z in range(vol.shape[-1]) if vol[..., z].any()]
    assert min(peaks) < 0.95                                     # a slice a per-slice rescaling would have stretched
    assert contract_of(name, out, ds) == 'as_prepared'


def test_nih_cxr14_resizes_as_pil_does():
    """DPA resizes with PIL's bilinear filter (nih_resize.py; torchvision's Resize on a PIL image), which widens when it
    shrinks. On fine stripes (period 2 px, 0/255) an un-antialiased zoom to 300 px leaves a moire of large swings;
    PIL's filter leaves mid-grey. preprocess must equal the official chain exactly."""
    from PIL import Image
    nih = script('nih_cxr14')
    img = np.zeros((1024, 1024), np.uint8); img[:, ::2] = 255                        # vertical stripes, 2 px period
    img[400:600, 400:600] = 128                                                        # and a flat square
    official = Image.fromarray(img).resize((300, 300), Image.BILINEAR)
    l = (300 - 224) // 2
    official = np.asarray(official.crop((l, l, l + 224, l + 224)).resize((64, 64), Image.BILINEAR))
    got = nih.preprocess(img, 64, equalize=False)
    assert got.dtype == np.uint8 and got.shape == (64, 64)
    assert np.array_equal(got, official)
    stripes = got[:8, :]                                                               # a band of stripes only
    assert abs(float(stripes.mean()) - 127.5) < 3 and float(stripes.std()) < 3       # mid-grey, no moire
    from uad_notebooks.prepare import resize2d                                         # what the script did before
    aliased = resize2d(img.astype(np.float32), 300, 1)[:20]
    assert float(aliased.std()) > 30                                                   # the moire this test guards against

"""mDDPM's real-data pairs end to end (IXI -> BraTS21, IXI -> MSLUB): tiny fabricated raw volumes go through
`data_scripts/<name>.py prepare` and `check`, then `repro_mddpm` runs on the prepared folders in smoke mode, and its
metrics.json must hold finite metrics and the protocol the official code uses (3-D median over each volume, slice
score after it, validation-loss selection on IXI validation, fp32, the prepared intensities). Each test takes well
under 30 s of CPU on two idle cores (the IXI folder is prepared once for both)."""
from __future__ import annotations
import json, math

import pytest

from test_data_scripts import CHAIN, head, nifti, pddpm_csv, run, write_csv

pytestmark = pytest.mark.notebook


def prepare_checked(name, raw, out, *extra):
    "Run `prepare` and `check` (counts of the paper's full dataset not required) and return provenance.json."
    assert run(name, 'prepare', '--raw-dir', raw, '--out-dir', out, *CHAIN, *extra) == 0
    assert run(name, 'check', '--out-dir', out, '--no-spec-counts') == 0
    return json.loads((out / 'provenance.json').read_text())


@pytest.fixture(scope='module')
def ixi(tmp_path_factory):
    "A prepared IXI folder: two training volumes and one validation volume of 8 slices each (own split lists)."
    tmp = tmp_path_factory.mktemp('ixi')
    raw, sp = tmp / 'raw', tmp / 'raw' / 'splits'
    ids = ['IXI002-Guys-1002', 'IXI003-HH-1003', 'IXI004-IOP-1004']
    for s in ids: nifti(raw / f'{s}-T2.nii.gz', head((20, 20, 12))[0], zooms=(1.2, 1.2, 1.5))
    t1 = lambda s: f'{s}_t1.nii.gz'
    pddpm_csv(sp / 'IXI_train_fold0.csv', [t1(ids[0]), t1(ids[1])], '/Train/ixi/t1')
    pddpm_csv(sp / 'IXI_val_fold0.csv', [t1(ids[2])], '/Train/ixi/t1')
    pddpm_csv(sp / 'IXI_test.csv', [t1(ids[2])], '/Train/ixi/t1')
    write_csv(sp / 'avail_t2.csv', ['', 'img_name'], [[i, f'{s}-T2.nii.gz'] for i, s in enumerate(ids)])
    prepare_checked('ixi', raw, tmp / 'ixi', '--own-splits')
    return tmp / 'ixi'


def run_pair(run_repro, dataset, data_dir, ixi_dir):
    metrics, out = run_repro('repro_mddpm', dataset=dataset, data_dir=str(data_dir), train_data_dir=str(ixi_dir),
                             variant='mddpm', n_boot=50)
    assert metrics['dataset'] == dataset and metrics['smoke'] is True and metrics['variants'] == ['mddpm']
    r = metrics['results']['mddpm']
    for k in ('dice', 'auroc', 'auprc'):
        assert math.isfinite(r['volume'][k]) and 0 <= r['volume'][k] <= 1, (k, r['volume'][k])
    assert math.isfinite(r['image']['auroc']) and math.isfinite(r['pixel']['auroc']) and math.isfinite(r['val_threshold'])
    # checkpoint chosen by the loss on the IXI validation volume (8 slices), in fp32, maps filtered in 3-D
    sel = r['selection']
    assert sel['selected'] == 'val_loss' and sel['n_val_slices'] == 8 and sel['best_step'] in [h['step'] for h in sel['val_history']]
    assert metrics['median'] == '3d' and metrics['amp'] is False
    assert all(i['name'] == 'as_prepared' and i['contract_applied'] for i in metrics['intensity'].values())
    card = {row['point']: row for row in metrics['protocol']}
    for point in ('median filter', 'slice score', 'precision', 'checkpoint selection', 'intensity', 'test noise level',
                  'brain-mask erosion', 'component filter', 'Dice threshold', 'metrics'):
        assert card[point]['match'] is True, (point, card[point])
    assert card['median filter']['ours'].startswith('3-D 5x5x5') and 'slice order' in card['median filter']['ours']
    assert card['precision']['ours'] == 'fp32' and 'IXI validation' in card['checkpoint selection']['ours']
    assert 'e76b948d0d95b7696eaa6020cbd659732da1475f' in card['median filter']['source']
    assert card['training length']['match'] is False and 'smoke' in card['training length']['note']
    assert card['preprocessing chain']['match'] is False and 'N4' in card['preprocessing chain']['ours']  # --no-n4 recorded
    ixi_split = card['split: training / validation (IXI)']
    assert ixi_split['match'] is False and 'own split lists' in ixi_split['note'] and 'IXI_train_fold0.csv' in ixi_split['ours']
    return metrics, card


def test_mddpm_ixi_to_brats21(tmp_path, ixi, run_repro):
    raw, sp = tmp_path / 'raw', tmp_path / 'raw' / 'splits'
    ids = [f'BraTS2021_{i:05d}' for i in (0, 2, 3)]
    for s in ids:
        img, seg = head((24, 24, 16), lesion=(slice(10, 14), slice(10, 14), slice(6, 10)))
        img[img < 50] = 0                                             # skull-stripped: background exactly 0
        d = raw / 'RSNA_ASNR_MICCAI_BraTS2021_TrainingData_16July2021' / s
        for m in ('t1', 't1ce', 't2', 'flair'): nifti(d / f'{s}_{m}.nii.gz', img)
        nifti(d / f'{s}_seg.nii.gz', seg * 2)
    pddpm_csv(sp / 'Brats21_val.csv', [f'{ids[0]}_t1.nii.gz'], '/Test/Brats21/t1')
    pddpm_csv(sp / 'Brats21_test.csv', [f'{s}_t1.nii.gz' for s in ids[1:]], '/Test/Brats21/t1')
    prepare_checked('brats2021', raw, tmp_path / 'brats', '--own-splits')
    metrics, card = run_pair(run_repro, 'brats21', tmp_path / 'brats', ixi)
    assert metrics['results']['mddpm']['volume']['n_volumes'] == 2 and metrics['results']['mddpm']['threshold_volumes'] == 1
    assert card['split: test (brats21)']['match'] is False and 'Brats21_test.csv' in card['split: test (brats21)']['ours']


def test_mddpm_ixi_to_mslub(tmp_path, ixi, run_repro):
    """MSLUB with the published, pinned lists the repository ships: the test split's card row matches the paper's."""
    raw = tmp_path / 'raw'
    for i in (1, 13, 26):
        s = f'patient{i:02d}'
        img, seg = head((20, 20, 14), lesion=(slice(8, 11), slice(8, 11), slice(4, 8)))
        nifti(raw / s / 'raw' / f'{s}_T2W.nii.gz', img); nifti(raw / s / 'raw' / f'{s}_FLAIR.nii.gz', img)
        nifti(raw / s / f'{s}_consensus_gt.nii.gz', seg)
    assert run('mslub', 'download', '--raw-dir', raw, '--offline') == 0     # installs the shipped, pinned lists
    prov = prepare_checked('mslub', raw, tmp_path / 'mslub')
    metrics, card = run_pair(run_repro, 'mslub', tmp_path / 'mslub', ixi)
    assert metrics['results']['mddpm']['volume']['n_volumes'] == 2
    row = card['split: test (mslub)']
    assert row['match'] is True, row
    for p, f in prov['split_files'].items():                                # the card shows the recorded SHA-256
        assert f['sha256'] == f['pinned'] and f['sha256'][:12] in row['ours'], (p, row['ours'])

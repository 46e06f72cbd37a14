"""BraTS 2021 (Task 1 training set, 1,251 subjects) T2 + segmentation: the tumour test set of mDDPM / pDDPM.

    python data_scripts/brats2021.py download --raw-dir RAW       # prints the Synapse step, fetches the split CSVs
    python data_scripts/brats2021.py prepare  --raw-dir RAW --out-dir data/brats2021
    python data_scripts/brats2021.py check    --out-dir data/brats2021
"""
from __future__ import annotations
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (MDDPM, DatasetScript, main, ManualStep, need, progress, published, published_split_dir, read_csv,
                     record_split_files, run, subject_of)  # noqa: E402
from _pddpm import Chain, add_chain_arguments, pddpm_split, write_subject  # noqa: E402
from uad_notebooks.prepare import split_subjects  # noqa: E402

BRATS_ID = r'BraTS2021_\d{5}'


def find_subjects(raw_dir, modality) -> dict:
    "{subject: (image, seg)} for BraTS2021_XXXXX/BraTS2021_XXXXX_{modality,seg}.nii.gz."
    out = {}
    for p in Path(raw_dir).rglob(f'BraTS2021_*_{modality}.nii.gz'):
        s = subject_of(p.name, BRATS_ID); seg = p.with_name(f'{s}_seg.nii.gz')
        if not seg.exists(): raise FileNotFoundError(f'{seg} missing (every training subject has a segmentation)')
        out[s] = (p, seg)
    if not out: raise FileNotFoundError(f'no BraTS2021_*_{modality}.nii.gz under {raw_dir}')
    return out


def prepare(raw_dir, out_dir, args, prov):
    subs = find_subjects(raw_dir, args.modality)
    if args.split_variant == 'generated':
        assign = split_subjects(subs, {'val': 100 / 1251, 'test': 1151 / 1251}, seed=args.seed)
        lists = {k: sorted(s for s, v in assign.items() if v == k) for k in ('val', 'test')}
        prov.d['split_variant'] = 'generated'; prov.step('generated split', seed=args.seed, sizes='100/1151 of 1251')
    else:
        sd = published_split_dir(args, SCRIPT)              # the shipped, pinned CSVs installed where missing
        for k in ('val', 'test'): need(sd / f'Brats21_{k}.csv')
        record_split_files(prov, SCRIPT, sd, args.split_variant)   # checked against their pins before they are read
        lists = {k: [subject_of(r['img_name'] + r.get('img_path', ''), BRATS_ID) for r in read_csv(sd / f'Brats21_{k}.csv')]
                 for k in ('val', 'test')}
        lists = pddpm_split(lists, args.split_variant, prov)
    prov.step('modality', use=args.modality, segmentation='all tumour labels > 0 (whole tumour)')
    chain = Chain(prov, args, resample_1mm=False, skull_strip='given', sri24=None, n4_mask=False)
    prov.note('BraTS 2021 is distributed skull-stripped, 1 mm, in SRI24 space: no resampling, stripping or registration')
    rows = []
    for split, names in lists.items():
        names = [s for s in names if s in subs]
        for s in progress(names[:args.limit] if args.limit else names, f'brats2021 {split}'):
            write_subject(out_dir, split, s, *chain(*subs[s]), rows)
    return rows


def add_arguments(p):
    p.add_argument('--modality', default='t2', choices=['t1', 't1ce', 't2', 'flair'], help='mDDPM uses T2')
    add_chain_arguments(p)


SCRIPT = DatasetScript(
    name='brats2021',
    description='BraTS 2021 Task 1 training set: 1,251 pre-operative glioma MRI (T1, T1ce, T2, FLAIR) with expert '
                'tumour segmentations, skull-stripped and co-registered to SRI24 at 1 mm.',
    citation='Baid et al., arXiv 2107.02314 (2021); Menze et al., IEEE TMI 2015; Bakas et al., Sci Data 2017',
    licence='RSNA-ASNR-MICCAI BraTS 2021 data-use terms (registration; cite the BraTS papers) [unverified details]',
    disk='raw: BraTS2021_Training_Data.tar, over 10 GB; prepared: 1,251 T2 volumes of 96x96x50 float32 = under 2.3 GB',
    manual=ManualStep('brats2021', 'https://www.synapse.org/brats2021 (or the Kaggle mirror dschettler8845/brats-2021-task1)',
                      ['Register for the RSNA-ASNR-MICCAI BraTS 2021 challenge on Synapse and accept its terms',
                       'Download BraTS2021_Training_Data.tar (Task 1)', 'tar -xf BraTS2021_Training_Data.tar -C RAW'],
                      ['**/BraTS2021_*_t2.nii.gz', '**/BraTS2021_*_seg.nii.gz'], 'BraTS 2021 data-use terms'),
    split_files=published(MDDPM, ['Data/splits/Brats21_val.csv', 'Data/splits/Brats21_test.csv']),
    prepare=prepare, add_arguments=add_arguments, unit='volumes',
    expected=lambda p: {('val', 'volumes'): 100, ('test', 'volumes'): 1151}
    if p.get('split_variant') == 'faithful' and not p.get('limit') else None)

if __name__ == '__main__':
    sys.exit(main(SCRIPT))

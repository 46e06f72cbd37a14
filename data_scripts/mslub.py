"""MSLUB (Lesjak et al. 2018, 30 MS patients, Ljubljana) T2 + consensus lesion masks: the MS test set of mDDPM.

    python data_scripts/mslub.py download --raw-dir RAW       # prints the manual step, fetches the split CSVs
    python data_scripts/mslub.py prepare  --raw-dir RAW --out-dir data/mslub
    python data_scripts/mslub.py check    --out-dir data/mslub
"""
from __future__ import annotations
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (MDDPM, DatasetScript, main, ManualStep, need, progress, published, published_split_dir, read_csv,
                     record_split_files, run, subject_of)  # noqa: E402
from _pddpm import Chain, add_chain_arguments, pddpm_split, write_subject  # noqa: E402
from uad_notebooks.prepare import split_subjects  # noqa: E402

PID = r'patient\d{2}'


def _pick(paths):
    "Prefer the raw (unpreprocessed) copy when the archive holds several."
    paths = sorted(paths, key=lambda p: ('raw' not in p.parts, str(p)))
    return paths[0] if paths else None


def find_subjects(raw_dir) -> dict:
    "{patientNN: (T2W, consensus_gt, brainmask or None)}."
    raw_dir = Path(raw_dir); out = {}
    for s in sorted({subject_of(p.name, PID) for p in raw_dir.rglob('patient*T2W*.nii.gz')}):
        t2 = _pick(raw_dir.rglob(f'{s}*T2W*.nii.gz')); gt = _pick(raw_dir.rglob(f'{s}*consensus_gt*.nii.gz'))
        if gt is None: raise FileNotFoundError(f'{s}: no *consensus_gt*.nii.gz under {raw_dir}')
        out[s] = (t2, gt, _pick(raw_dir.rglob(f'{s}*brainmask*.nii.gz')))
    if not out: raise FileNotFoundError(f'no patientNN*T2W*.nii.gz under {raw_dir}')
    return out


def prepare(raw_dir, out_dir, args, prov):
    subs = find_subjects(raw_dir)
    if args.split_variant == 'generated':
        assign = split_subjects(subs, {'val': 1 / 3, 'test': 2 / 3}, seed=args.seed)
        lists = {k: sorted(s for s, v in assign.items() if v == k) for k in ('val', 'test')}
        prov.d['split_variant'] = 'generated'; prov.step('generated split', seed=args.seed, sizes='10/20 of 30')
    else:
        sd = published_split_dir(args, SCRIPT)              # the shipped, pinned CSVs installed where missing
        for k in ('val', 'test'): need(sd / f'MSLUB_{k}.csv')
        record_split_files(prov, SCRIPT, sd, args.split_variant)   # checked against their pins before they are read
        lists = {k: [subject_of(r['img_name'], PID) for r in read_csv(sd / f'MSLUB_{k}.csv')] for k in ('val', 'test')}
        lists = pddpm_split(lists, args.split_variant, prov)
    chain = Chain(prov, args, resample_1mm=True, skull_strip='hd-bet', sri24=args.sri24)
    prov.step('segmentation', source='consensus_gt (pDDPM renames it *_seg)')
    rows = []
    for split, names in lists.items():
        names = [s for s in names if s in subs]
        for s in progress(names[:args.limit] if args.limit else names, f'mslub {split}'):
            t2, gt, bm = subs[s]
            write_subject(out_dir, split, s, *chain(t2, gt, bm if args.use_brainmask else None), rows)
    return rows


def add_arguments(p):
    p.add_argument('--use-brainmask', action='store_true',
                   help="use a brain mask shipped with the data instead of HD-BET / the threshold stand-in")
    add_chain_arguments(p)


SCRIPT = DatasetScript(
    name='mslub',
    description='MSLUB: 3D MR images (T1, T1 contrast, T2, FLAIR) of 30 multiple-sclerosis patients from the '
                'University Medical Centre Ljubljana with consensus white-matter-lesion segmentations.',
    citation='Lesjak et al., Neuroinformatics 16 (2018) 51-63',
    licence='free for research after agreeing to the terms on the download page; cite Lesjak et al. 2018 [unverified]',
    disk='raw: about 1-2 GB; prepared: 30 volumes of 96x96x50 float32 = under 60 MB',
    manual=ManualStep('mslub', 'https://lit.fe.uni-lj.si/en/research/resources/3D-MR-MS/',
                      ['Open the page, agree to the terms and download the archive',
                       'Unzip it into RAW (files named patientNN_T2W.nii.gz and patientNN_consensus_gt.nii.gz)'],
                      ['**/patient*T2W*.nii.gz', '**/patient*consensus_gt*.nii.gz'], 'research use, cite Lesjak et al.'),
    split_files=published(MDDPM, ['Data/splits/MSLUB_val.csv', 'Data/splits/MSLUB_test.csv']),
    prepare=prepare, add_arguments=add_arguments, unit='volumes',
    expected=lambda p: {('val', 'volumes'): 10, ('test', 'volumes'): 20}
    if p.get('split_variant') == 'faithful' and not p.get('limit') else None)

if __name__ == '__main__':
    sys.exit(main(SCRIPT))

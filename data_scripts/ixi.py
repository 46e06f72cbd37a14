"""IXI T2 (healthy brains) for mDDPM / pDDPM: training, validation and healthy test volumes.

    python data_scripts/ixi.py download --raw-dir RAW          # public: IXI-T2.tar (about 4.5 GB)
    python data_scripts/ixi.py prepare  --raw-dir RAW --out-dir data/ixi [--fold 0] [--split-variant clean]
    python data_scripts/ixi.py check    --out-dir data/ixi
"""
from __future__ import annotations
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (MDDPM, DatasetScript, main, need, progress, published, published_split_dir, read_csv,
                     record_split_files, Resource, run, subject_of)  # noqa: E402
from _pddpm import Chain, add_chain_arguments, pddpm_split, write_subject  # noqa: E402
from uad_notebooks.prepare import split_subjects  # noqa: E402

IXI_ID = r'IXI\d{3}-[A-Za-z]+-\d{4}'
FILES = ['Data/splits/IXI_train_fold{k}.csv', 'Data/splits/IXI_val_fold{k}.csv']
PATHS = [f.format(k=k) for k in range(5) for f in FILES] + ['Data/splits/IXI_test.csv', 'Data/splits/avail_t2.csv']
# volumes per split after the T2 filter (counted from the published pDDPM CSVs; duplicates included)
EXPECTED = {0: (385, 44), 1: (385, 44), 2: (385, 44), 3: (386, 43), 4: (386, 43)}


def find_t2(raw_dir) -> dict:
    "{subject: path} of the IXI T2 volumes (IXI002-Guys-0828-T2.nii.gz)."
    out = {subject_of(p.name, IXI_ID): p for p in Path(raw_dir).rglob('IXI*-T2.nii.gz')}
    if not out: raise FileNotFoundError(f'no IXI*-T2.nii.gz under {raw_dir}: run `ixi.py download` (extracts IXI-T2.tar)')
    return out


def subjects_of_csv(path) -> list:
    "Subjects of a pDDPM split CSV (column img_name, e.g. IXI105-HH-1471_t1.nii.gz), in order, duplicates kept."
    rows = read_csv(path)
    if not rows or 'img_name' not in rows[0]: raise ValueError(f'{path}: expected a column img_name')
    return [subject_of(r['img_name'], IXI_ID) for r in rows]


def prepare(raw_dir, out_dir, args, prov):
    t2 = find_t2(raw_dir)
    if args.split_variant == 'generated':
        assign = split_subjects(t2, {'train': .655, 'val': .075, 'test': .27}, seed=args.seed)
        lists = {s: sorted(k for k, v in assign.items() if v == s) for s in ('train', 'val', 'test')}
        prov.d['split_variant'] = 'generated'; prov.step('generated split', seed=args.seed, fractions='65.5/7.5/27 %')
    else:
        sd = published_split_dir(args, SCRIPT)              # the shipped, pinned CSVs installed where missing
        used = [f'IXI_train_fold{args.fold}.csv', f'IXI_val_fold{args.fold}.csv', 'IXI_test.csv']
        for f in used: need(sd / f)
        record_split_files(prov, SCRIPT, sd, args.split_variant,    # checked against their pins before they are read
                           paths=[f'Data/splits/{f}' for f in used + ['avail_t2.csv'] if (sd / f).exists()])
        lists = {'train': subjects_of_csv(sd / f'IXI_train_fold{args.fold}.csv'),
                 'val': subjects_of_csv(sd / f'IXI_val_fold{args.fold}.csv'), 'test': subjects_of_csv(sd / 'IXI_test.csv')}
        avail = sd / 'avail_t2.csv'
        if avail.exists():   # pDDPM's T2 filter: keep subjects listed in avail_t2.csv
            ok = {subject_of(v, IXI_ID) for r in read_csv(avail) for v in r.values() if v and 'IXI' in v}
            lists = {k: [s for s in v if s in ok] for k, v in lists.items()}
            prov.step('T2 filter', file='avail_t2.csv', subjects=len(ok))
        lists = pddpm_split(lists, args.split_variant, prov)
    missing = sorted({s for v in lists.values() for s in v} - set(t2))
    if missing: prov.note(f'{len(missing)} listed subjects have no T2 file and are skipped, e.g. {missing[:3]}')
    chain = Chain(prov, args, resample_1mm=True, skull_strip='hd-bet', sri24=args.sri24)
    rows, done = [], {}
    for split, subs in lists.items():
        subs = [s for s in subs if s in t2][:args.limit] if args.limit else [s for s in subs if s in t2]
        for s in progress(subs, f'ixi {split}'):
            if s not in done: done[s] = chain(t2[s])
            write_subject(out_dir, split, s, *done[s], rows)
    return rows


def add_arguments(p):
    p.add_argument('--fold', type=int, default=0, choices=range(5), help='pDDPM fold (mDDPM trains fold 0)')
    add_chain_arguments(p)


def expected(params):
    if params.get('split_variant') != 'faithful' or params.get('limit'): return None
    tr, va = EXPECTED[params.get('fold', 0)]
    return {('train', 'volumes'): tr, ('val', 'volumes'): va, ('test', 'volumes'): 158}


SCRIPT = DatasetScript(
    name='ixi',
    description='IXI: about 600 MR images of healthy subjects from three London hospitals (Guys, HH, IOP); the T2 '
                'volumes train and validate mDDPM/pDDPM and serve as the healthy test set.',
    citation='IXI dataset, brain-development.org (Imperial College London); Behrendt et al., MIDL 2023 (splits)',
    licence='CC BY-SA 3.0 (per brain-development.org; exact version unverified)',
    disk='raw: IXI-T2.tar, a few GB; prepared: 587 volumes of 96x96x50 float32 (1.8 MB before gzip) = under 1 GB',
    resources=[Resource('http://biomedic.doc.ic.ac.uk/brain-development/downloads/IXI/IXI-T2.tar', 'IXI-T2.tar',
                        extract=True),
               Resource('http://biomedic.doc.ic.ac.uk/brain-development/downloads/IXI/IXI.xls', 'IXI.xls')],
    split_files=published(MDDPM, PATHS),
    prepare=prepare, add_arguments=add_arguments, expected=expected, unit='volumes')

if __name__ == '__main__':
    sys.exit(main(SCRIPT))

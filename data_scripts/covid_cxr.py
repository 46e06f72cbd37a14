"""COVID-19 chest X-rays (COVIDx CXR layout) for MemMC-MAE: normal vs COVID-positive.

The MemMC-MAE abstract names only "covid-19 CXR"; which dataset the paper used is unverified (the paper's method section could not be read). This script
prepares COVIDx CXR (COVID-Net), a common choice, from its label files: lines `patient_id filename class source`.

    python data_scripts/covid_cxr.py download --raw-dir RAW     # prints the Kaggle step
    python data_scripts/covid_cxr.py prepare  --raw-dir RAW --out-dir data/covid_cxr
    python data_scripts/covid_cxr.py check    --out-dir data/covid_cxr
"""
from __future__ import annotations
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DatasetScript, load_grey8, main, ManualStep, progress, read_lines, run  # noqa: E402

import numpy as np  # noqa: E402
from uad_notebooks.prepare import resize2d, save_image, split_subjects  # noqa: E402

NORMAL, COVID = {'negative', 'normal'}, {'positive', 'covid-19', 'covid'}


def read_labels(path) -> list:
    "[(patient, filename, class)] of a COVIDx label file."
    out = []
    for line in read_lines(path):
        parts = line.split()
        if len(parts) < 3: raise ValueError(f'{path}: expected "patient_id filename class [source]", got {line!r}')
        out.append((parts[0], parts[1], parts[2].lower()))
    return out


def prepare(raw_dir, out_dir, args, prov):
    raw_dir = Path(raw_dir)
    lists = {s: raw_dir / f'{s}.txt' for s in ('train', 'val', 'test') if (raw_dir / f'{s}.txt').exists()}
    if 'train' not in lists or 'test' not in lists: raise FileNotFoundError(f'{raw_dir}/train.txt and test.txt are needed')
    entries = {s: read_labels(p) for s, p in lists.items()}
    if 'val' not in entries:   # older releases: carve a patient-level validation split out of train
        assign = split_subjects([e[0] for e in entries['train']], {'train': 1 - args.val_frac, 'val': args.val_frac}, seed=args.seed)
        entries['val'] = [e for e in entries['train'] if assign[e[0]] == 'val']
        entries['train'] = [e for e in entries['train'] if assign[e[0]] == 'train']
        prov.step('validation split', source='patients of train.txt', fraction=args.val_frac, seed=args.seed)
    prov.d['split_variant'] = 'official lists (COVIDx), train restricted to normals'
    prov.step('classes', normal=sorted(NORMAL), abnormal=sorted(COVID), excluded='non-COVID pneumonia')
    prov.step('resize', size=args.img_size, grey='PIL convert("L"); 16-bit images scaled by 255/65535',
              stored='8-bit grey PNG of the values as saved (bilinear resize, rounded); no per-image scaling',
              load="x / 255 by load_dataset (intensity contract 'uint8_to_unit', our choice)")
    rows, n = [], defaultdict(int)
    for split, items in entries.items():
        for pid, fname, c in progress(items, f'covid_cxr {split}'):
            label = 0 if c in NORMAL else 1 if c in COVID else None
            if label is None or (split == 'train' and label == 1): continue
            src = next((p for p in (raw_dir / split / fname, raw_dir / 'train' / fname, raw_dir / 'test' / fname) if p.exists()), None)
            if src is None: raise FileNotFoundError(f'{fname} (listed in {split}.txt) not found under {raw_dir}/{split}/')
            if args.limit and n[split, label] >= args.limit: continue
            n[split, label] += 1
            stem = Path(fname).stem
            img = resize2d(load_grey8(src).astype(np.float32), args.img_size, 1).clip(0, 255).round().astype(np.uint8)
            save_image(img, Path(out_dir) / 'images' / split / f'{stem}.png')
            rows.append(dict(split=split, subject=pid, label=label, image=f'images/{split}/{stem}.png', mask='', brain=''))
    shared = {p for p in {r['subject'] for r in rows if r['split'] == 'test'}} & {r['subject'] for r in rows if r['split'] != 'test'}
    if shared: prov.note(f'{len(shared)} patients appear in test and in train/val of the official lists')
    return rows


def add_arguments(p):
    p.add_argument('--img-size', type=int, default=256)
    p.add_argument('--val-frac', type=float, default=0.1, help='patients of train.txt held out when there is no val.txt')


SCRIPT = DatasetScript(
    name='covid_cxr',
    description='COVIDx CXR (COVID-Net): chest radiographs of COVID-19 positive and negative patients gathered from '
                'several public sources, with patient-level train/val/test label files.',
    citation='Wang, Lin & Wong, Sci Rep 10 (2020) 19549 (COVID-Net / COVIDx); dataset identity for MemMC-MAE unverified',
    licence='mixed: each source keeps its own licence (see the COVIDx README); research use',
    disk='about 30 GB (COVIDx CXR-4 on Kaggle); prepared 256x256 PNG about 3 GB',
    manual=ManualStep('covid_cxr', 'https://www.kaggle.com/datasets/andyczhao/covidx-cxr2',
                      ['Sign in to Kaggle', 'kaggle datasets download -d andyczhao/covidx-cxr2',
                       'unzip into RAW (RAW/train/, RAW/test/, RAW/train.txt, RAW/test.txt [, RAW/val/, RAW/val.txt])'],
                      ['train.txt', 'test.txt'], 'per source'),
    prepare=prepare, add_arguments=add_arguments, expected=None)

if __name__ == '__main__':
    sys.exit(main(SCRIPT))

"""NIH ChestX-ray14 for DPA (Shvetsova et al. 2021): PA, AP or the authors' subset; No Finding = normal.

    python data_scripts/nih_cxr14.py download --raw-dir RAW    # prints the NIH Box step, fetches DPA's split lists
    python data_scripts/nih_cxr14.py prepare  --raw-dir RAW --out-dir data/nih_pa --view PA
    python data_scripts/nih_cxr14.py check    --out-dir data/nih_pa
"""
from __future__ import annotations
import re, sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (DPA, DatasetScript, main, ManualStep, progress, read_csv, read_lines, run, sha256sum,
                     split_dir_of, SplitFiles)  # noqa: E402

import numpy as np  # noqa: E402
from uad_notebooks.prepare import center_crop, histogram_equalize, resize2d, save_image  # noqa: E402

IMG = re.compile(r'\d{8}_\d{3}\.png')
LISTS = {('train', 0): 'normal/train', ('test', 0): 'normal/test', ('test', 1): 'anomaly/test'}
# spec A.8 (counted from DPA's split files)
EXPECTED = {'PA': {('train', 0): 34497, ('test', 0): 4805, ('test', 1): 6291},
            'AP': {('train', 0): 16003, ('test', 0): 5056, ('test', 1): 9444},
            'subset': {('train', 0): 4261, ('test', 0): 677, ('test', 1): 667}}
PATHS = [f'folds/train_test_split/nih/{v}/{l}' for v in ('PA', 'AP', 'subset') for l in LISTS.values()]


def local_name(view, lst):
    return f'nih_{view}_{lst.replace("/", "_")}.txt'


def load_grey(path) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as im: return np.asarray(im.convert('L'))


def preprocess(img: np.ndarray, size: int, equalize: bool) -> np.ndarray:
    "DPA: 8-bit grey -> 300x300 (bilinear) -> centre crop 224 -> [histogram equalisation] -> size x size."
    x = resize2d(img.astype(np.float32), 300, 1).clip(0, 255).round().astype(np.uint8)
    x = center_crop(x, 224)
    if equalize: x = histogram_equalize(x)
    return resize2d(x.astype(np.float32), size, 1).clip(0, 255).round().astype(np.uint8)


def plan_split(raw_dir, args, prov, entries) -> list:
    "[(split, label, image name)] from DPA's lists or from the official NIH lists filtered by view."
    if args.split_variant in ('faithful', 'clean'):
        sd = split_dir_of(args); plan = []
        for (split, lab), lst in LISTS.items():
            f = sd / local_name(args.view, lst)
            plan += [(split, lab, IMG.search(l).group(0)) for l in read_lines(f) if IMG.search(l)]
            src = f'folds/train_test_split/nih/{args.view}/{lst}'
            prov.d['split_files'][src] = dict(url=SCRIPT.split_files.url(src), sha256=sha256sum(f), local=str(f))
        prov.d['split_variant'] = args.split_variant
        return plan
    if args.view == 'subset': raise ValueError('the DPA subset exists only as published lists: use --split-variant faithful')
    train = set(read_lines(next(Path(raw_dir).rglob('train_val_list.txt'))))
    test = set(read_lines(next(Path(raw_dir).rglob('test_list.txt'))))
    plan = []
    for name, e in entries.items():
        if e['View Position'] != args.view: continue
        normal = e['Finding Labels'] == 'No Finding'
        if name in train and normal: plan.append(('train', 0, name))
        elif name in test: plan.append(('test', 0 if normal else 1, name))
    prov.d['split_variant'] = 'official NIH lists filtered by view (how DPA built its lists, spec A.8)'
    return plan


def prepare(raw_dir, out_dir, args, prov):
    raw_dir = Path(raw_dir)
    de = next(iter(sorted(raw_dir.rglob('Data_Entry_2017*.csv'))), None)
    if de is None: raise FileNotFoundError(f'Data_Entry_2017.csv not found under {raw_dir}')
    entries = {r['Image Index']: r for r in read_csv(de)}
    files = {p.name: p for p in raw_dir.rglob('images*/**/*.png')}
    plan = plan_split(raw_dir, args, prov, entries)
    if args.split_variant == 'clean':   # DPA's lists are patient-wise already; drop exact duplicates if any
        seen, keep = set(), []
        for p in plan:
            if p[2] not in seen: seen.add(p[2]); keep.append(p)
        prov.step('clean split', removed=len(plan) - len(keep)); plan = keep
    missing = [p[2] for p in plan if p[2] not in files]
    if missing: raise FileNotFoundError(f'{len(missing)} listed image(s) not under {raw_dir}/images*/, e.g. {missing[0]}')
    eq = args.view == 'AP' if args.equalize is None else args.equalize
    prov.step('preprocess', chain='grey 8-bit -> resize 300 bilinear -> centre crop 224 -> '
              + ('histogram equalisation -> ' if eq else '') + f'resize {args.img_size}', equalize=eq,
              note='DPA normalises to [-1, 1] at load time (Normalize(0.5, 0.5))')
    rows, n = [], defaultdict(int)
    for split, lab, name in progress(plan, 'nih images'):
        if args.limit and n[split, lab] >= args.limit: continue
        n[split, lab] += 1
        save_image(preprocess(load_grey(files[name]), args.img_size, eq), Path(out_dir) / 'images' / name)
        e = entries.get(name, {})
        rows.append(dict(split=split, subject=e.get('Patient ID', name[:8]), label=lab, image=f'images/{name}',
                         mask='', brain='', findings=e.get('Finding Labels', ''), view=e.get('View Position', '')))
    return rows


def add_arguments(p):
    p.add_argument('--view', choices=['PA', 'AP', 'subset'], default='PA')
    p.add_argument('--img-size', type=int, default=64, help='DPA: 64')
    p.add_argument('--equalize', type=lambda s: s.lower() in ('1', 'true', 'yes'), default=None,
                   help='histogram equalisation (default: on for AP only, as in DPA)')


SCRIPT = DatasetScript(
    name='nih_cxr14',
    description='NIH ChestX-ray14: 112,120 frontal chest radiographs (1024x1024 PNG) of 30,805 patients with 14 '
                'text-mined finding labels, official patient-wise train_val / test lists.',
    citation='Wang et al., CVPR 2017 (ChestX-ray8); Shvetsova et al., IEEE Access 9 (2021) (DPA splits)',
    licence='released by the NIH Clinical Center without restriction; acknowledge NIH CC and cite Wang et al. [exact terms unverified]',
    disk='about 45 GB (12 tar.gz); prepared 64x64 PNG about 0.2 GB per view',
    manual=ManualStep('nih_cxr14', 'https://nihcc.app.box.com/v/ChestXray-NIHCC',
                      ['Open the NIH Box folder (no account needed); download images/images_001.tar.gz ... images_012.tar.gz',
                       'and Data_Entry_2017.csv (Data_Entry_2017_v2020.csv), train_val_list.txt, test_list.txt',
                       'extract every tar.gz into RAW (it creates RAW/images/*.png)'],
                      ['images*/**/*.png', 'Data_Entry_2017*.csv', 'train_val_list.txt', 'test_list.txt'],
                      'NIH CC public release'),
    split_files=SplitFiles(DPA[0], DPA[1], PATHS, optional=['folds/train_test_split/nih/subset/normal/train']),
    prepare=prepare, add_arguments=add_arguments,
    expected=lambda p: EXPECTED[p.get('view', 'PA')] if p.get('split_variant') == 'faithful' and not p.get('limit') else None)
# DPA's list files have the same base names for every view (normal/train ...): store them under distinct names
SCRIPT.split_files.local = lambda split_dir, path: Path(split_dir) / local_name(path.split('/')[-3], '/'.join(path.split('/')[-2:]))

if __name__ == '__main__':
    sys.exit(main(SCRIPT))

"""BraTS 2020 (Kaggle per-slice HDF5 mirror) for Georgescu's MAE + pseudo-abnormal classifier.

    python data_scripts/brats2020.py download --raw-dir RAW
    python data_scripts/brats2020.py prepare  --raw-dir RAW --out-dir data/brats2020
    python data_scripts/brats2020.py check    --out-dir data/brats2020
"""
from __future__ import annotations
import re, sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (GEORGESCU, DatasetScript, main, ManualStep, progress, published, published_split_dir, read_lines,
                     record_split_files, run)  # noqa: E402

import numpy as np  # noqa: E402
from uad_notebooks.prepare import resize2d, save_image, split_subjects  # noqa: E402

NAME = re.compile(r'volume_(\d+)_slice_(\d+)')
SPLIT_LISTS = {  # file -> (split, label); Georgescu's dataset/split/brats/*.txt
    'normal_training_samples.txt': ('train', 0), 'normal_val_samples.txt': ('val', 0),
    'abnormal_val_samples.txt': ('val', 1), 'normal_test_samples.txt': ('test', 0),
    'abnormal_test_samples.txt': ('test', 1)}
EXPECTED = {('train', 0): 15557, ('val', 0): 4013, ('val', 1): 2962, ('test', 0): 13203, ('test', 1): 9737}


def load_h5(path, channel: int):
    "Channel `channel` of the (240, 240, 4) `image` and the tumour mask (any of the 3 `mask` channels)."
    import h5py   # only needed for this dataset; `pip install h5py`
    with h5py.File(path, 'r') as f:
        img, mask = np.asarray(f['image']), np.asarray(f['mask'])
    if img.ndim != 3 or img.shape[-1] < channel + 1:
        raise ValueError(f'{path}: image has shape {img.shape}, expected (240, 240, 4)')
    return img[..., channel].astype(np.float32), (mask > 0).any(-1), (img != 0).any(-1)


def find_slices(raw_dir) -> dict:
    "{(volume, slice): path} of every volume_{v}_slice_{s}.h5 under raw_dir."
    out = {}
    for p in Path(raw_dir).rglob('volume_*_slice_*.h5'):
        m = NAME.search(p.name); out[int(m.group(1)), int(m.group(2))] = p
    if not out: raise FileNotFoundError(f'no volume_*_slice_*.h5 files under {raw_dir} (Kaggle awsaf49/brats2020-training-data)')
    return out


def plan_split(files: dict, args, prov) -> list:
    "[(split, label, volume, slice)] from the published lists, or a generated patient-level split."
    variant = args.split_variant
    if variant == 'generated':
        vols = sorted({v for v, _ in files})
        assign = split_subjects(vols, {'train': 176 / 369, 'val': 45 / 369, 'test': 148 / 369}, seed=args.seed)
        prov.d['split_variant'] = 'generated'
        prov.step('generated split', seed=args.seed, fractions='176/45/148 of 369 volumes (Georgescu sizes)')
        return [(assign[v], None, v, s) for v, s in sorted(files)]
    sd = published_split_dir(args, SCRIPT)                  # the shipped, pinned lists installed where missing
    plan, seen = [], defaultdict(list)
    for fname in SPLIT_LISTS:
        f = sd / fname
        if not f.exists(): raise FileNotFoundError(f'split file {f} missing: run `brats2020.py download` on a connected '
                                                   f'machine, or use --split-variant generated')
    record_split_files(prov, SCRIPT, sd, variant)            # each list checked against its pin before it is read
    for fname, (split, label) in SPLIT_LISTS.items():
        f = sd / fname
        for line in read_lines(f):
            m = NAME.search(line)
            if not m: raise ValueError(f'{f}: unexpected entry {line!r} (want volume_V_slice_S.npy)')
            key = int(m.group(1)), int(m.group(2))
            seen[key].append(split); plan.append((split, label, *key))
    dup = {k: v for k, v in seen.items() if len(v) > 1}
    vol_splits = defaultdict(set)
    for split, _, v, _ in plan: vol_splits[v].add(split)
    shared = sorted(v for v, s in vol_splits.items() if len(s) > 1)
    prov.step('published split', duplicates=len(dup), volumes_in_two_splits=len(shared))
    if variant == 'clean':
        keep, done = [], set()
        for split, label, v, s in plan:
            if (v, s) in done or (len(vol_splits[v]) > 1 and split != 'test'): continue
            done.add((v, s)); keep.append((split, label, v, s))
        prov.step('clean split', removed=len(plan) - len(keep))
        plan = keep
    return plan


def prepare(raw_dir, out_dir, args, prov):
    files = find_slices(raw_dir)
    plan = plan_split(files, args, prov)
    missing = [(v, s) for _, _, v, s in plan if (v, s) not in files]
    if missing:
        raise FileNotFoundError(f'{len(missing)} slice(s) of the split are not in {raw_dir}, e.g. '
                                f'volume_{missing[0][0]}_slice_{missing[0][1]}.h5')
    if args.limit:
        vols = defaultdict(list)
        for p in plan: vols[p[0]].append(p[2])
        keep = {s: set(sorted(set(v))[:args.limit]) for s, v in vols.items()}
        plan = [p for p in plan if p[2] in keep[p[0]]]
    prov.step('read HDF5', key='image', channel=args.channel,
              note='channel order of the Kaggle mirror is unverified (probably T1, T1ce, T2, FLAIR); Georgescu uses channel 0')
    prov.step('intensity', stored='channel values of the Kaggle arrays, unchanged (float32)',
              load="unchanged (intensity contract 'as_stored': Georgescu's process_image uses mean 0, std 1)")
    if args.img_size: prov.step('resize', size=args.img_size, order=3, masks='nearest')
    rows, mislabelled = [], 0
    for split, label, v, s in progress(plan, 'brats2020 slices'):
        img, tumour, brain = load_h5(files[v, s], args.channel)
        real = int(tumour.any())
        if label is None:
            if split == 'train' and real: continue          # training keeps only tumour-free slices
            label = real
        elif label != real: mislabelled += 1
        if args.img_size:
            img = resize2d(img, args.img_size, 3); tumour = resize2d(tumour.astype(np.uint8), args.img_size, 0)
            brain = resize2d(brain.astype(np.uint8), args.img_size, 0)
        stem = f'volume_{v}_slice_{s}'
        save_image(img.astype(np.float32), Path(out_dir) / 'images' / f'{stem}.npy')
        save_image((tumour > 0).astype(np.uint8) * 255, Path(out_dir) / 'masks' / f'{stem}.png')
        save_image((brain > 0).astype(np.uint8) * 255, Path(out_dir) / 'brains' / f'{stem}.png')
        rows.append(dict(split=split, subject=f'volume_{v}', label=label, image=f'images/{stem}.npy',
                         mask=f'masks/{stem}.png', brain=f'brains/{stem}.png', slice_index=s))
    prov.step('labels', rule='abnormal iff the tumour mask is non-empty', list_vs_mask_disagreements=mislabelled)
    return rows


def add_arguments(p):
    p.add_argument('--channel', type=int, default=0, help='channel of the 4-channel image (Georgescu: 0)')
    p.add_argument('--img-size', type=int, default=None, help='resize slices (Georgescu resizes 240 -> 224 at load time)')


SCRIPT = DatasetScript(
    name='brats2020',
    description='BraTS 2020 training set (369 glioma MRI volumes, 4 modalities, tumour segmentations) as the Kaggle '
                'per-slice HDF5 mirror that Georgescu (KES 2023) used; 155 axial 240x240 slices per volume.',
    citation='Menze et al., IEEE TMI 2015; Bakas et al., Sci Data 2017; Bakas et al., arXiv 1811.02629',
    licence='BraTS data-use terms (research use, cite the BraTS papers); check the Kaggle page licence before redistribution',
    disk='raw: Kaggle zip of 57,195 HDF5 slices (several GB); prepared: 45,472 slices x 230 KB (240x240 float32) = about 10.5 GB, less with --img-size',
    manual=ManualStep('brats2020', 'https://www.kaggle.com/datasets/awsaf49/brats2020-training-data',
                      ['Sign in to Kaggle and accept the dataset terms',
                       'kaggle datasets download -d awsaf49/brats2020-training-data (or the web Download button)',
                       'unzip the archive into the raw folder'],
                      ['**/volume_*_slice_*.h5'], 'BraTS 2020 data-use terms'),
    split_files=published(GEORGESCU, [f'dataset/split/brats/{f}' for f in SPLIT_LISTS]),
    prepare=prepare, add_arguments=add_arguments,
    expected=lambda params: EXPECTED if params.get('split_variant') == 'faithful' and not params.get('limit') else None)

if __name__ == '__main__':
    sys.exit(main(SCRIPT))

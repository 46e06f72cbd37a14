"""Hyper-Kvasir (Simula) for MemMC-MAE: normal anatomical-landmark frames vs polyps, polyp masks for localisation.

    python data_scripts/hyper_kvasir.py download --raw-dir RAW    # public: labelled + segmented image zips (~4 GB)
    python data_scripts/hyper_kvasir.py prepare  --raw-dir RAW --out-dir data/hyper_kvasir
    python data_scripts/hyper_kvasir.py check    --out-dir data/hyper_kvasir
"""
from __future__ import annotations
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DatasetScript, main, progress, Resource, run  # noqa: E402

import numpy as np  # noqa: E402
from uad_notebooks.prepare import resize2d, save_image, split_subjects  # noqa: E402

BASE = 'https://datasets.simula.no/downloads/hyper-kvasir/'


def load_rgb(path) -> np.ndarray:
    from PIL import Image
    with Image.open(path) as im: return np.asarray(im.convert('RGB'))


def find_labelled(raw_dir) -> list:
    "[(path, organ, classification, finding)] from labeled-images/<organ>/<classification>/<finding>/*.jpg."
    out = []
    for p in sorted(Path(raw_dir).rglob('labeled-images/*/*/*/*.jpg')):
        out.append((p, p.parts[-4], p.parts[-3], p.parts[-2]))
    if not out: raise FileNotFoundError(f'no labeled-images/<organ>/<class>/<finding>/*.jpg under {raw_dir}')
    return out


def prepare(raw_dir, out_dir, args, prov):
    items = find_labelled(raw_dir)
    masks = {p.stem: p for p in Path(raw_dir).rglob('segmented-images/masks/*.jpg')}
    normal = [it for it in items if it[2] in args.normal_classes]
    abnormal = [it for it in items if it[3] in args.abnormal_findings]
    if not normal or not abnormal: raise ValueError(f'no normal ({args.normal_classes}) or abnormal ({args.abnormal_findings}) images found')
    fr = dict(zip(('train', 'val', 'test'), args.fractions))
    a_n = split_subjects([it[0].stem for it in normal], fr, seed=args.seed)
    a_a = split_subjects([it[0].stem for it in abnormal], {'val': fr['val'] / (fr['val'] + fr['test']),
                                                          'test': fr['test'] / (fr['val'] + fr['test'])}, seed=args.seed)
    prov.d['split_variant'] = 'generated'
    prov.step('classes', normal=f'classification in {args.normal_classes}', abnormal=f'finding in {args.abnormal_findings}')
    prov.step('split', kind='image level (Hyper-Kvasir has no patient ids), seeded', seed=args.seed, fractions=fr,
              note="MemMC-MAE's split (probably CCD's Hyper-Kvasir anomaly split, Google Drive) is unverified (no code; the paper's data section could not be read)")
    prov.step('resize', size=args.img_size, colour='RGB kept', masks=f'{len(masks)} polyp masks (JPEG, > 127)',
              stored='8-bit RGB PNG (bilinear resize, rounded); no per-image scaling',
              load="x / 255 per channel by load_dataset (intensity contract 'uint8_to_unit', our choice); load with in_chans=3")
    rows, n = [], defaultdict(int)
    for lab, group, assign in ((0, normal, a_n), (1, abnormal, a_a)):
        for p, organ, klass, finding in progress(group, f'hyper_kvasir label {lab}'):
            split = assign[p.stem]
            if args.limit and n[split, lab] >= args.limit: continue
            n[split, lab] += 1
            save_image(resize2d(load_rgb(p), args.img_size, 1).clip(0, 255).round().astype(np.uint8),
                       Path(out_dir) / 'images' / f'{p.stem}.png')
            m = ''
            if lab and p.stem in masks:
                mk = (load_rgb(masks[p.stem]).mean(-1) > 127).astype(np.uint8) * 255
                save_image(resize2d(mk, args.img_size, 0), Path(out_dir) / 'masks' / f'{p.stem}.png'); m = f'masks/{p.stem}.png'
            rows.append(dict(split=split, subject=p.stem, label=lab, image=f'images/{p.stem}.png', mask=m, brain='',
                             finding=finding, organ=organ))
    return rows


def add_arguments(p):
    p.add_argument('--img-size', type=int, default=256)
    p.add_argument('--normal-classes', nargs='+', default=['anatomical-landmarks'])
    p.add_argument('--abnormal-findings', nargs='+', default=['polyps'])
    p.add_argument('--fractions', type=float, nargs=3, default=[0.7, 0.1, 0.2], help='normal images: train val test')


SCRIPT = DatasetScript(
    name='hyper_kvasir',
    description='Hyper-Kvasir: 110,079 gastrointestinal endoscopy images (10,662 labelled into 23 classes) and '
                '1,000 polyp images with segmentation masks, from Baerum Hospital, Norway.',
    citation='Borgli et al., Scientific Data 7 (2020) 283',
    licence='CC BY 4.0 (per the dataset owners; not re-checked)',
    disk='labelled images about 3.9 GB, segmented images about 46 MB; prepared about 0.2 GB',
    resources=[Resource(BASE + 'hyper-kvasir-labeled-images.zip', 'hyper-kvasir-labeled-images.zip', extract=True),
               Resource(BASE + 'hyper-kvasir-segmented-images.zip', 'hyper-kvasir-segmented-images.zip', extract=True)],
    prepare=prepare, add_arguments=add_arguments, expected=None)

if __name__ == '__main__':
    sys.exit(main(SCRIPT))

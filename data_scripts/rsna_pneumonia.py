"""RSNA Pneumonia Detection Challenge 2018 (Kaggle): normal vs lung-opacity chest X-rays, boxes as masks.

    python data_scripts/rsna_pneumonia.py download --raw-dir RAW    # prints the Kaggle step (competition rules)
    python data_scripts/rsna_pneumonia.py prepare  --raw-dir RAW --out-dir data/rsna_pneumonia
    python data_scripts/rsna_pneumonia.py check    --out-dir data/rsna_pneumonia
"""
from __future__ import annotations
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DatasetScript, main, ManualStep, progress, read_csv, run  # noqa: E402

import numpy as np  # noqa: E402
from uad_notebooks.prepare import resize2d, save_image, split_subjects  # noqa: E402


def read_dicom(path) -> np.ndarray:
    "Pixel array of a DICOM file (`uad_notebooks.data.read_dicom`: slope/intercept, MONOCHROME1)."
    from uad_notebooks.data import read_dicom as rd
    return rd(path)


def dicom_uint8(img: np.ndarray, path, size: int) -> np.ndarray:
    """The 8-bit pixel values of an RSNA DICOM (8-bit MONOCHROME2), resized (bilinear) and rounded: the values as
    stored, nothing per image. Pixel data outside 0..255 is not what RSNA ships: a clear error."""
    if img.min() < 0 or img.max() > 255:
        raise ValueError(f'{path}: pixel values {img.min():g}..{img.max():g} are not 8-bit (RSNA ships 8-bit '
                         f'MONOCHROME2 DICOMs, values 0..255)')
    return resize2d(img, size, 1).clip(0, 255).round().astype(np.uint8)


def prepare(raw_dir, out_dir, args, prov):
    raw_dir = Path(raw_dir)
    lab_p = next(iter(sorted(raw_dir.rglob('stage_2_train_labels.csv'))), None)
    cls_p = next(iter(sorted(raw_dir.rglob('stage_2_detailed_class_info.csv'))), None)
    if lab_p is None or cls_p is None: raise FileNotFoundError(f'stage_2_train_labels.csv / stage_2_detailed_class_info.csv not under {raw_dir}')
    dcm = {p.stem: p for p in raw_dir.rglob('stage_2_train_images/*.dcm')}
    boxes, cls = defaultdict(list), {}
    for r in read_csv(lab_p):
        if r['Target'] == '1': boxes[r['patientId']].append([float(r[k]) for k in ('x', 'y', 'width', 'height')])
    for r in read_csv(cls_p): cls[r['patientId']] = r['class']
    keep = {'Normal': 0, 'Lung Opacity': 1}
    if args.include_not_normal: keep['No Lung Opacity / Not Normal'] = 1
    ids = sorted(p for p, c in cls.items() if c in keep and p in dcm)
    miss = sorted(p for p, c in cls.items() if c in keep and p not in dcm)
    if miss: prov.note(f'{len(miss)} labelled images have no DICOM file, e.g. {miss[:2]}')
    prov.step('classes', normal='Normal', abnormal=sorted(k for k, v in keep.items() if v),
              excluded=[] if args.include_not_normal else ['No Lung Opacity / Not Normal'])
    normal = [p for p in ids if keep[cls[p]] == 0]; abnormal = [p for p in ids if keep[cls[p]] == 1]
    fr = dict(zip(('train', 'val', 'test'), args.fractions))
    a_normal = split_subjects(normal, fr, seed=args.seed)
    a_abn = split_subjects(abnormal, {'val': fr['val'] / (fr['val'] + fr['test']), 'test': fr['test'] / (fr['val'] + fr['test'])},
                           seed=args.seed)
    prov.d['split_variant'] = 'generated'
    prov.step('split', kind='patient level (one image per patientId), seeded', seed=args.seed, fractions=fr,
              note="MemMC-MAE does not publish its RSNA split (unknown: no code, and its data section could not be read); train holds normals only")
    prov.step('read DICOM', tool='pydicom via uad_notebooks.data.read_dicom',
              stored='the 8-bit DICOM pixel values (0..255), resized and rounded, as 8-bit PNG; no per-image scaling',
              load="x / 255 by load_dataset (intensity contract 'uint8_to_unit', our choice)")
    prov.step('resize', size=args.img_size, order=1, boxes='scaled with the image')
    rows, n = [], defaultdict(int)
    for p in progress(ids, 'rsna images'):
        split = (a_normal if p in a_normal else a_abn)[p]; label = keep[cls[p]]
        if args.limit and n[split, label] >= args.limit: continue
        n[split, label] += 1
        img = read_dicom(dcm[p]); h, w = img.shape[:2]
        mask = np.zeros((h, w), np.uint8)
        for x, y, bw, bh in boxes.get(p, []): mask[int(y):int(np.ceil(y + bh)), int(x):int(np.ceil(x + bw))] = 255
        img = dicom_uint8(img, dcm[p], args.img_size); mask = resize2d(mask, args.img_size, 0)
        save_image(img, Path(out_dir) / 'images' / f'{p}.png'); save_image(mask, Path(out_dir) / 'masks' / f'{p}.png')
        rows.append(dict(split=split, subject=p, label=label, image=f'images/{p}.png',
                         mask=f'masks/{p}.png' if label else '', brain='', rsna_class=cls[p]))
    prov.note('masks are the bounding boxes of lung opacities (rectangles, not outlines); empty for normal images')
    return rows


def add_arguments(p):
    p.add_argument('--img-size', type=int, default=256, help='output side in pixels (MemMC-MAE input size unverified)')
    p.add_argument('--fractions', type=float, nargs=3, default=[0.7, 0.1, 0.2], help='normal images: train val test')
    p.add_argument('--include-not-normal', action='store_true', help="count 'No Lung Opacity / Not Normal' as abnormal")


SCRIPT = DatasetScript(
    name='rsna_pneumonia',
    description='RSNA Pneumonia Detection Challenge (2018): 26,684 frontal chest radiographs (DICOM, from NIH '
                'ChestX-ray14) labelled Normal / Lung Opacity / No Lung Opacity-Not Normal, with opacity boxes.',
    citation='Shih et al., Radiology: AI 1(1) 2019; Wang et al., CVPR 2017 (source images)',
    licence='Kaggle competition rules: research/education, commercial or non-commercial use with attribution to RSNA',
    disk='about 4 GB DICOM; prepared 256x256 PNG about 0.6 GB',
    manual=ManualStep('rsna_pneumonia', 'https://www.kaggle.com/competitions/rsna-pneumonia-detection-challenge/data',
                      ['Sign in to Kaggle and accept the competition rules',
                       'kaggle competitions download -c rsna-pneumonia-detection-challenge',
                       'unzip rsna-pneumonia-detection-challenge.zip -d RAW'],
                      ['stage_2_train_images/*.dcm', 'stage_2_train_labels.csv', 'stage_2_detailed_class_info.csv'],
                      'RSNA/Kaggle competition rules'),
    prepare=prepare, add_arguments=add_arguments, expected=None)

if __name__ == '__main__':
    sys.exit(main(SCRIPT))

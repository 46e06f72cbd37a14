"""NIH ChestX-ray14 for DPA (Shvetsova et al. 2021): PA, AP or the authors' subset; No Finding = normal.

    python data_scripts/nih_cxr14.py download --raw-dir RAW    # prints the NIH Box step, fetches DPA's split lists
    python data_scripts/nih_cxr14.py prepare  --raw-dir RAW --out-dir data/nih_pa --view PA
    python data_scripts/nih_cxr14.py check    --out-dir data/nih_pa

A folder that holds only part of NIH ChestX-ray14 as class folders plus a `labels.csv` (columns file, class, label,
nih_finding_labels, patient_id, view_position; e.g. ../shared/data/nih-cxr14-pneumonia-256) is read as a *subset*:
no official lists exist for it, so `--split-variant generated` splits it by patient, and `check` reports its counts
next to the spec's full-dataset numbers instead of failing on them.
"""
from __future__ import annotations
import re, sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (DPA, DatasetScript, load_grey8, main, ManualStep, need, progress, published, published_split_dir,
                     read_csv, read_lines, record_split_files, run)  # noqa: E402

import numpy as np  # noqa: E402
from uad_notebooks.prepare import center_crop, histogram_equalize, save_image  # noqa: E402

IMG = re.compile(r'\d{8}_\d{3}\.png')
LISTS = {('train', 0): 'normal/train', ('test', 0): 'normal/test', ('test', 1): 'anomaly/test'}
# counted from DPA's split files (ninatu/anomaly_detection folds/train_test_split)
EXPECTED = {'PA': {('train', 0): 34497, ('test', 0): 4805, ('test', 1): 6291},
            'AP': {('train', 0): 16003, ('test', 0): 5056, ('test', 1): 9444},
            'subset': {('train', 0): 4261, ('test', 0): 677, ('test', 1): 667}}
PATHS = [f'folds/train_test_split/nih/{v}/{l}' for v in ('PA', 'AP', 'subset') for l in LISTS.values()]


def local_name(view, lst):
    return f'nih_{view}_{lst.replace("/", "_")}.txt'


def pil_bilinear(x: np.ndarray, size: int) -> np.ndarray:
    """PIL's bilinear resize of an 8-bit grey image to size x size: what DPA's `utils/preprocessing/nih_resize.py`
    (`image.resize((300, 300), PIL.Image.BILINEAR)`) and torchvision's `Resize(64)` on a PIL image both run. PIL widens
    its filter when it shrinks (antialiasing): a 1024 -> 300 spline zoom without that aliases fine texture (ribs, lines)."""
    from PIL import Image
    return np.asarray(Image.fromarray(np.asarray(x, np.uint8), mode='L').resize((size, size), Image.BILINEAR))


def preprocess(img: np.ndarray, size: int, equalize: bool) -> np.ndarray:
    "DPA: 8-bit grey -> 300x300 (PIL bilinear) -> centre crop 224 -> [histogram equalisation] -> size x size (PIL bilinear)."
    x = pil_bilinear(np.asarray(img).clip(0, 255).round().astype(np.uint8), 300)
    x = center_crop(x, 224)
    if equalize: x = histogram_equalize(x)
    return pil_bilinear(x, size)


def in_view(e, view) -> bool:
    return view == 'all' or e['View Position'] == view


def plan_split(raw_dir, args, prov, entries) -> list:
    "[(split, label, image name)] from DPA's lists, the official NIH lists filtered by view, or a generated split."
    if args.split_variant in ('faithful', 'clean'):
        if prov.d.get('subset'):
            raise ValueError(f'{raw_dir} holds a subset of NIH ChestX-ray14 (labels.csv): DPA\'s lists name images it '
                             f'lacks; use --split-variant generated')
        sd = published_split_dir(args, SCRIPT); plan = []    # the shipped, pinned lists installed where missing
        for lst in LISTS.values(): need(sd / local_name(args.view, lst))
        record_split_files(prov, SCRIPT, sd, args.split_variant,    # checked against their pins before they are read
                           paths=[f'folds/train_test_split/nih/{args.view}/{lst}' for lst in LISTS.values()])
        for (split, lab), lst in LISTS.items():
            f = sd / local_name(args.view, lst)
            plan += [(split, lab, IMG.search(l).group(0)) for l in read_lines(f) if IMG.search(l)]
        return plan
    if args.view == 'subset': raise ValueError('the DPA subset exists only as published lists: use --split-variant faithful')
    if prov.d.get('subset'): return plan_subset(entries, args, prov)
    train = set(read_lines(next(Path(raw_dir).rglob('train_val_list.txt'))))
    test = set(read_lines(next(Path(raw_dir).rglob('test_list.txt'))))
    plan = []
    for name, e in entries.items():
        if not in_view(e, args.view): continue
        normal = e['Finding Labels'] == 'No Finding'
        if name in train and normal: plan.append(('train', 0, name))
        elif name in test: plan.append(('test', 0 if normal else 1, name))
    prov.d['split_variant'] = 'official NIH lists filtered by view (how DPA built its lists: utils/preprocessing/nih_create_train_test_splits.py)'
    return plan


def plan_subset(entries, args, prov) -> list:
    """A subset without the official lists: patients with any finding go to test; the finding-free patients are split
    `test_fraction` / rest (seeded); train keeps normals only. Patient-level: no patient is in two splits."""
    from uad_notebooks.prepare import split_subjects
    if not 0 < args.test_fraction < 1: raise ValueError(f'--test-fraction must be in (0, 1), got {args.test_fraction}')
    chosen = {n: e for n, e in entries.items() if in_view(e, args.view)}
    sick = {e['Patient ID'] for e in chosen.values() if e['Finding Labels'] != 'No Finding'}
    healthy = sorted({e['Patient ID'] for e in chosen.values()} - sick)
    assign = split_subjects(healthy, {'test': args.test_fraction, 'train': 1 - args.test_fraction}, seed=args.seed)
    assign.update({p: 'test' for p in sick})
    plan = [(assign[e['Patient ID']], 0 if e['Finding Labels'] == 'No Finding' else 1, n) for n, e in sorted(chosen.items())]
    prov.d['split_variant'] = 'generated'
    prov.step('generated patient-level split (no official lists in this folder)', seed=args.seed,
              test_fraction_of_finding_free_patients=args.test_fraction, patients_with_findings='all in test',
              patients={k: sum(v == k for v in assign.values()) for k in ('train', 'test')},
              images_left_out_by_view=len(entries) - len(chosen))
    return plan


def read_entries(raw_dir, prov) -> dict:
    "{image name: NIH metadata} from Data_Entry_2017*.csv, or from a subset folder's labels.csv (recorded as a subset)."
    raw_dir = Path(raw_dir)
    de = next(iter(sorted(raw_dir.rglob('Data_Entry_2017*.csv'))), None)
    if de is not None: return {r['Image Index']: r for r in read_csv(de)}
    lab = raw_dir / 'labels.csv'
    if not lab.exists():
        raise FileNotFoundError(f"Data_Entry_2017.csv not found under {raw_dir} (nor a subset folder's labels.csv)")
    rows = read_csv(lab)
    cols = {'file', 'label', 'nih_finding_labels', 'patient_id', 'view_position'}
    if not rows or not cols <= set(rows[0]):
        raise ValueError(f'{lab}: expected a header with {sorted(cols)} and at least one row')
    out = {}
    for r in rows:
        if r['label'] not in ('0', '1'): raise ValueError(f"{lab}: label {r['label']!r} of {r['file']} is not 0 or 1")
        if not IMG.fullmatch(r['file']): raise ValueError(f"{lab}: {r['file']!r} is not an NIH image name (NNNNNNNN_NNN.png)")
        find = r['nih_finding_labels'] or ('No Finding' if r['label'] == '0' else r.get('class') or 'finding')
        if (find == 'No Finding') != (r['label'] == '0'):
            raise ValueError(f"{lab}: {r['file']} has label {r['label']} but findings {find!r}")
        out[r['file']] = {'Image Index': r['file'], 'Finding Labels': find, 'View Position': r['view_position'],
                          'Patient ID': r['patient_id'] or str(int(r['file'][:8]))}   # NIH names start with the patient id
    prov.d['subset'] = dict(source=str(lab), images=len(out),
                            note="part of NIH ChestX-ray14 without the official lists: counts cannot match the spec's")
    return out


def prepare(raw_dir, out_dir, args, prov):
    raw_dir = Path(raw_dir)
    entries = read_entries(raw_dir, prov)
    files = {p.name: p for p in raw_dir.glob('**/*.png' if prov.d.get('subset') else 'images*/**/*.png')}
    plan = plan_split(raw_dir, args, prov, entries)
    if args.split_variant == 'clean':   # DPA's lists are patient-wise already; drop exact duplicates if any
        seen, keep = set(), []
        for p in plan:
            if p[2] not in seen: seen.add(p[2]); keep.append(p)
        prov.step('clean split', removed=len(plan) - len(keep)); plan = keep
    missing = [p[2] for p in plan if p[2] not in files]
    if missing: raise FileNotFoundError(f'{len(missing)} listed image(s) not under {raw_dir}, e.g. {missing[0]}')
    eq = args.view == 'AP' if args.equalize is None else args.equalize
    prov.step('preprocess', chain='grey 8-bit -> resize 300 (PIL bilinear, antialiased) -> centre crop 224 -> '
              + ('histogram equalisation -> ' if eq else '') + f'resize {args.img_size} (PIL bilinear)', equalize=eq,
              stored='8-bit grey PNG (8-bit sources as saved, 16-bit ones scaled by 255/65535)',
              load="x * 2/255 - 1 by load_dataset (intensity contract 'uint8_to_pm1': DPA's ToTensor + Normalize(0.5, 0.5))")
    rows, n = [], defaultdict(int)
    for split, lab, name in progress(plan, 'nih images'):
        if args.limit and n[split, lab] >= args.limit: continue
        n[split, lab] += 1
        save_image(preprocess(load_grey8(files[name]), args.img_size, eq), Path(out_dir) / 'images' / name)
        e = entries.get(name, {})
        rows.append(dict(split=split, subject=e.get('Patient ID', name[:8]), label=lab, image=f'images/{name}',
                         mask='', brain='', findings=e.get('Finding Labels', ''), view=e.get('View Position', '')))
    return rows


def add_arguments(p):
    p.add_argument('--view', choices=['PA', 'AP', 'subset', 'all'], default='PA',
                   help="PA / AP as DPA; subset: DPA's fixed lists; all: every view (not a DPA setting)")
    p.add_argument('--test-fraction', type=float, default=0.2,
                   help='generated split of a subset folder: share of the finding-free patients put in test')
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
    split_files=published(DPA, PATHS),
    prepare=prepare, add_arguments=add_arguments, alt_layout=lambda raw: (Path(raw) / 'labels.csv').exists(),
    expected=lambda p: EXPECTED.get(p.get('view', 'PA')) if (p.get('split_variant') == 'faithful' and not p.get('limit'))
                                                          or p.get('_subset') else None)
# DPA's list files have the same base names for every view (normal/train ...): store them under distinct names
SCRIPT.split_files.local = lambda split_dir, path: Path(split_dir) / local_name(path.split('/')[-3], '/'.join(path.split('/')[-2:]))

if __name__ == '__main__':
    sys.exit(main(SCRIPT))

"""LUNA16 candidate regions (2-D crops around candidates) for Georgescu's MAE + pseudo-abnormal classifier.

    python data_scripts/luna16.py download --raw-dir RAW       # prints the grand-challenge step, fetches the splits
    python data_scripts/luna16.py prepare  --raw-dir RAW --out-dir data/luna16
    python data_scripts/luna16.py check    --out-dir data/luna16
"""
from __future__ import annotations
import csv, re, sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (GEORGESCU, DatasetScript, main, ManualStep, need, progress, published, published_split_dir,
                     read_lines, record_split_files, run)  # noqa: E402

import numpy as np  # noqa: E402
from uad_notebooks.prepare import save_image  # noqa: E402

SPLIT_LISTS = {'normal_training_samples.txt': ('train', 0), 'normal_val_samples.txt': ('val', 0),
               'abnormal_val_samples.txt': ('val', 1), 'normal_test_samples.txt': ('test', 0),
               'abnormal_test_samples.txt': ('test', 1)}
EXPECTED = {('train', 0): 49964, ('val', 0): 3000, ('val', 1): 351, ('test', 0): 9994, ('test', 1): 1000}
_TYPES = {'MET_SHORT': '<i2', 'MET_USHORT': '<u2', 'MET_FLOAT': '<f4', 'MET_UCHAR': 'u1', 'MET_CHAR': 'i1',
          'MET_INT': '<i4', 'MET_DOUBLE': '<f8'}


def read_mhd(path):
    "(array (z, y, x), origin (x, y, z) mm, spacing (x, y, z) mm) of a MetaImage .mhd/.raw pair, no SimpleITK needed."
    hdr = {}
    for line in Path(path).read_text().splitlines():
        if '=' in line: k, v = line.split('=', 1); hdr[k.strip()] = v.strip()
    dims = [int(x) for x in hdr['DimSize'].split()]
    dtype = np.dtype(_TYPES[hdr['ElementType']])
    if hdr.get('BinaryDataByteOrderMSB', 'False').lower() == 'true': dtype = dtype.newbyteorder('>')
    tm = [float(x) for x in hdr.get('TransformMatrix', '1 0 0 0 1 0 0 0 1').split()]
    if not np.allclose(tm, [1, 0, 0, 0, 1, 0, 0, 0, 1]):
        raise ValueError(f'{path}: non-identity TransformMatrix {tm} is not supported without SimpleITK')
    raw = Path(path).with_name(hdr['ElementDataFile'])
    vol = np.fromfile(raw, dtype=dtype).reshape(dims[::-1])
    return vol, np.array(hdr['Offset'].split(), float), np.array(hdr['ElementSpacing'].split(), float)


def crop2d(vol, origin, spacing, world, size: int, pad: float = -1000.0):
    "Axial (size x size) crop in voxels around the candidate at `world` (x, y, z mm), padded with air (-1000 HU)."
    x, y, z = np.round((np.asarray(world) - origin) / spacing).astype(int)
    if not 0 <= z < vol.shape[0]: raise ValueError(f'candidate z={z} outside the scan (0..{vol.shape[0] - 1})')
    out = np.full((size, size), pad, np.float32)
    h = size // 2
    y0, x0 = y - h, x - h
    ys, xs = slice(max(y0, 0), min(y0 + size, vol.shape[1])), slice(max(x0, 0), min(x0 + size, vol.shape[2]))
    out[ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] = vol[z, ys, xs]
    return out


def row_offset(candidates, abnormal_rows) -> int:
    "The row-number convention (0 or 1 based, with or without header) under which every listed abnormal row has class 1."
    for off in (0, 1, 2, -1):
        rows = [r + off for r in abnormal_rows]
        if all(0 <= r < len(candidates) and candidates[r]['class'] == '1' for r in rows): return off
    raise ValueError('no row-number convention makes all listed abnormal candidates class 1: wrong candidates.csv?')


def prepare(raw_dir, out_dir, args, prov):
    raw_dir = Path(raw_dir)
    cand_p = next(iter(sorted(raw_dir.rglob('candidates.csv'))), None)
    if cand_p is None: raise FileNotFoundError(f'candidates.csv not found under {raw_dir}')
    with open(cand_p, newline='') as f: cands = list(csv.DictReader(f))
    scans = {p.stem: p for p in raw_dir.rglob('subset*/*.mhd')}
    off = 0
    if args.split_variant == 'generated':
        rng = np.random.default_rng(args.seed)
        pos = [i for i, c in enumerate(cands) if c['class'] == '1' and c['seriesuid'] in scans]
        neg = [i for i, c in enumerate(cands) if c['class'] == '0' and c['seriesuid'] in scans]
        rng.shuffle(pos); rng.shuffle(neg)
        n_tr, n_va = int(len(neg) * 49964 / 62958), int(len(neg) * 3000 / 62958)
        p_va = int(round(len(pos) * 351 / 1351))
        plan = [('train', 0, i) for i in neg[:n_tr]] + [('val', 0, i) for i in neg[n_tr:n_tr + n_va]] + \
               [('test', 0, i) for i in neg[n_tr + n_va:]] + [('val', 1, i) for i in pos[:p_va]] + \
               [('test', 1, i) for i in pos[p_va:]]
        prov.d['split_variant'] = 'generated'; prov.step('generated split', seed=args.seed, level='candidate')
    else:
        sd = published_split_dir(args, SCRIPT)              # the shipped, pinned lists installed where missing
        for f in SPLIT_LISTS: need(sd / f)                   # a clear error where one is missing ...
        record_split_files(prov, SCRIPT, sd, args.split_variant)   # ... and each checked against its pin before use
        lists = {f: [int(re.sub(r'\D', '', l)) for l in read_lines(sd / f)] for f in SPLIT_LISTS}
        off = row_offset(cands, [r for f, (_, lab) in SPLIT_LISTS.items() if lab == 1 for r in lists[f]])
        prov.step('row convention', offset=off, note='split entries {row}.npy index candidates.csv data rows + offset')
        plan = [(s, lab, r + off) for f, (s, lab) in SPLIT_LISTS.items() for r in lists[f]]
        if args.split_variant == 'clean':   # Georgescu's split is per candidate: drop train/val candidates of test scans
            scan_split = defaultdict(set)
            for s, _, i in plan: scan_split[cands[i]['seriesuid']].add(s)
            rank = {'test': 0, 'val': 1, 'train': 2}
            first = {u: min(v, key=rank.get) for u, v in scan_split.items()}
            n0 = len(plan); plan = [p for p in plan if first[cands[p[2]]['seriesuid']] == p[0]]
            prov.step('clean split', removed=n0 - len(plan), rule='a scan belongs to its most held-out split')
    if args.limit:
        per = defaultdict(list)
        for p in plan: per[p[:2]].append(p)
        plan = [p for v in per.values() for p in v[:args.limit]]
    prov.step('crop', what='axial slice through the candidate centre, square crop in voxels', size=args.crop_size,
              pad='-1000 HU', note='crop geometry is not in Georgescu\'s code or README: unverified')
    prov.step('intensity', stored='Hounsfield units (float32), air padding -1000 HU',
              load="HU / 100 by load_dataset (intensity contract 'hu_div_100', as Georgescu's process_image for luna16_unnorm)")
    missing = sorted({cands[i]['seriesuid'] for _, _, i in plan} - set(scans))
    if missing: raise FileNotFoundError(f'{len(missing)} scan(s) of the split are not under {raw_dir}/subset*/, e.g. {missing[0]}')
    by_scan = defaultdict(list)
    for s, lab, i in plan: by_scan[cands[i]['seriesuid']].append((s, lab, i))
    rows = []
    for uid, items in progress(sorted(by_scan.items()), 'luna16 scans'):
        vol, origin, spacing = read_mhd(scans[uid])
        for s, lab, i in items:
            c = cands[i]
            if int(c['class']) != lab: raise ValueError(f'candidates.csv row {i} has class {c["class"]} but the split says {lab}')
            img = crop2d(vol, origin, spacing, [float(c['coordX']), float(c['coordY']), float(c['coordZ'])], args.crop_size)
            name = f'{i - off}.npy'                          # the split files' own naming: {row}.npy
            save_image(img, Path(out_dir) / 'images' / name)
            rows.append(dict(split=s, subject=uid, label=lab, image=f'images/{name}', mask='', brain='', candidate_row=i))
    return rows


def add_arguments(p):
    p.add_argument('--crop-size', type=int, default=64, help='crop side in voxels (unverified; Georgescu resizes to 64)')


SCRIPT = DatasetScript(
    name='luna16',
    description='LUNA16: 888 chest CT scans from LIDC-IDRI (subset0-9, MetaImage) with 551,065 nodule candidates '
                '(candidates.csv, 1,351 true nodules); Georgescu uses 2-D regions around candidates.',
    citation='Setio et al., Medical Image Analysis 42 (2017) 1-13; Armato et al., Med Phys 2011 (LIDC-IDRI)',
    licence='LUNA16 data CC BY 4.0; LIDC-IDRI CC BY 3.0',
    disk='raw: 10 subset zips, tens of GB; prepared: 64,309 crops x 16 KB (64x64 float32) = about 1 GB',
    manual=ManualStep('luna16', 'https://luna16.grand-challenge.org/Data/ (a Zenodo mirror exists, records 3723295 / 4121926: unverified)',
                      ['Sign in to grand-challenge and open the LUNA16 Data page',
                       'Download subset0.zip ... subset9.zip and candidates.csv (the original, not candidates_V2)',
                       'Unzip every subset into RAW/subsetN/'],
                      ['subset*/*.mhd', '**/candidates.csv'], 'CC BY 4.0'),
    split_files=published(GEORGESCU, [f'dataset/split/luna16/{f}' for f in SPLIT_LISTS]),
    prepare=prepare, add_arguments=add_arguments,
    expected=lambda p: EXPECTED if p.get('split_variant') == 'faithful' and not p.get('limit') else None)

if __name__ == '__main__':
    sys.exit(main(SCRIPT))

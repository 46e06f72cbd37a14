"""CAMELYON16 lymph-node whole-slide images as x10 patches for DPA (Shvetsova et al. 2021).

    python data_scripts/camelyon16.py download --raw-dir RAW    # prints the manual step, fetches DPA's patch lists
    python data_scripts/camelyon16.py prepare  --raw-dir RAW --out-dir data/camelyon16
    python data_scripts/camelyon16.py check    --out-dir data/camelyon16
"""
from __future__ import annotations
import csv, re, sys, xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (DPA, DatasetScript, main, ManualStep, progress, published, published_split_dir, read_lines,
                     record_split_files, run)  # noqa: E402

import numpy as np  # noqa: E402
from uad_notebooks.prepare import (MacenkoNormalizer, optional_import, patch_grid, resize2d, sample_patches,  # noqa: E402
                                   save_image, tissue_mask, VahadaneNormalizer)

PATCH = re.compile(r'(?P<slide>(?:normal|tumor|test)_\d{3})_(?P<kind>tumor|normal)_x_(?P<x>\d+)_y_(?P<y>\d+)_w_(?P<w>\d+)_h_(?P<h>\d+)')
LISTS = {'normal/train': ('train', 0), 'anomaly/train': ('val', 1), 'normal/test': ('test', 0), 'anomaly/test': ('test', 1)}
EXCLUDED = {'normal_027', 'normal_045', 'normal_108', 'normal_144', 'normal_150', 'normal_158', 'test_114'}  # ninatu/anomaly_detection camelyon16_preprocessing/scripts
TARGET = 'normal_056', (120832, 23808, 2816)   # DPA's stain reference: x, y, side of a level-0 crop (ninatu/anomaly_detection camelyon16_preprocessing)
EXPECTED = {('train', 0): 7612, ('val', 1): 2169, ('test', 0): 4000, ('test', 1): 817}


class Slide:
    "A whole-slide image read with openslide where installed and it knows the format, else with PIL (small TIFFs only)."
    def __init__(self, path):
        self.path, self.osl, self.s = Path(path), optional_import('openslide'), None
        if self.osl is not None:
            try: self.s = self.osl.OpenSlide(str(path)); self.size = self.s.dimensions
            except self.osl.OpenSlideError: self.s = None    # e.g. a plain strip TIFF: not a slide format openslide reads
        if self.s is None:
            from PIL import Image
            if self.path.stat().st_size > 2 ** 30:
                raise RuntimeError(f'{path}: a real whole-slide image needs openslide (pip install openslide-python openslide-bin)')
            with Image.open(path) as im: self.img = np.asarray(im.convert('RGB'))
            self.size = self.img.shape[1], self.img.shape[0]
        self.reader = 'openslide' if self.s is not None else 'PIL'

    def region(self, x, y, w, h) -> np.ndarray:
        "RGB (h, w, 3) at level 0, top-left (x, y)."
        if self.s is not None: return np.asarray(self.s.read_region((x, y), 0, (w, h)).convert('RGB'))
        return self.img[y:y + h, x:x + w]

    def thumbnail(self, down: int) -> np.ndarray:
        "RGB thumbnail downsampled by `down` (box average)."
        w, h = self.size[0] // down, self.size[1] // down
        if self.s is not None: return np.asarray(self.s.get_thumbnail((w, h)).convert('RGB').resize((w, h)))
        a = self.img[:h * down, :w * down].astype(np.float32)
        return a.reshape(h, down, w, down, 3).mean((1, 3)).astype(np.uint8)


def tumour_polygons(xml_path) -> tuple:
    "(tumour polygons, exclusion polygons) of an ASAP annotation XML, level-0 (x, y) coordinates."
    pos, neg = [], []
    for a in ET.parse(xml_path).getroot().iter('Annotation'):
        pts = [(float(c.get('X')), float(c.get('Y'))) for c in a.iter('Coordinate')]   # 'X', not 'x' (DPA issue #1)
        (neg if a.get('PartOfGroup') in ('_2', 'Exclusion') else pos).append(pts)
    return pos, neg


def rasterize(polys, shape, down: int) -> np.ndarray:
    "Tumour mask at the thumbnail grid (`down` = downsample), exclusions removed."
    from PIL import Image, ImageDraw
    pos, neg = polys
    im = Image.new('L', (shape[1], shape[0]), 0); d = ImageDraw.Draw(im)
    for p in pos: d.polygon([(x / down, y / down) for x, y in p], fill=1)
    for p in neg: d.polygon([(x / down, y / down) for x, y in p], fill=0)
    return np.asarray(im, bool)


def sample_slide(slide: Slide, polys, kind, args, seed) -> list:
    "DPA steps 3-4: regions of `patch_size` fully in tissue (and in tumour for kind='tumor'), at most n per slide."
    down = args.patch_size // 3
    thumb = slide.thumbnail(down)
    mask = tissue_mask(thumb)
    if kind == 'tumor': mask &= rasterize(polys, mask.shape, down)
    rc = sample_patches(patch_grid(mask, 3), args.per_slide, seed)
    return [(int(c) * down, int(r) * down) for r, c in rc]


def reference(raw_dir) -> dict:
    "{test_XXX: 'Tumor' | 'Normal'} from testing reference.csv (no header: name, class, ...)."
    p = next(iter(sorted(Path(raw_dir).rglob('reference.csv'))), None)
    if p is None: raise FileNotFoundError(f'reference.csv (test labels) not found under {raw_dir}')
    with open(p, newline='') as f: return {r[0].replace('.tif', ''): r[1] for r in csv.reader(f) if r}


def plan(raw_dir, args, prov, slides, xmls) -> list:
    "[(split, label, slide, kind, x, y)] from DPA's lists or sampled as DPA's scripts do."
    if args.split_variant in ('faithful', 'clean'):
        sd = published_split_dir(args, SCRIPT); out = []    # the shipped, pinned lists installed where missing
        record_split_files(prov, SCRIPT, sd, args.split_variant)   # checked against their pins before they are read
        for lst, (split, lab) in LISTS.items():
            f = sd / f'camelyon16_{lst.replace("/", "_")}.txt'
            if not f.exists() and lst == 'normal/train':
                prov.note('DPA normal/train list not present: training normals sampled from the normal slides'); continue
            for line in read_lines(f):
                m = PATCH.search(line)
                if m: out.append((split, lab, m['slide'], m['kind'], int(m['x']), int(m['y'])))
        if not any(o[0] == 'train' for o in out): out += sampled(raw_dir, args, slides, xmls, only='train')
        return out
    prov.d['split_variant'] = 'generated'
    return sampled(raw_dir, args, slides, xmls)


def sampled(raw_dir, args, slides, xmls, only=None) -> list:
    ref = reference(raw_dir) if only is None else {}
    out = []
    for i, (name, path) in enumerate(sorted(slides.items())):
        if name in EXCLUDED: continue
        if name.startswith('normal'): jobs = [('train', 0, 'normal')]
        elif only is not None: continue
        elif name.startswith('tumor'): jobs = [('val', 1, 'tumor')]
        elif ref.get(name, '').lower() == 'normal': jobs = [('test', 0, 'normal')]
        else: jobs = [('test', 1, 'tumor')]
        for split, lab, kind in jobs:
            if only and split != only: continue
            if kind == 'tumor' and name not in xmls: continue
            polys = tumour_polygons(xmls[name]) if kind == 'tumor' else None
            for x, y in sample_slide(Slide(path), polys, kind, args, args.seed + i):
                out.append((split, lab, name, kind, x, y))
    return out


def prepare(raw_dir, out_dir, args, prov):
    raw_dir = Path(raw_dir)
    slides = {p.stem: p for p in raw_dir.rglob('*.tif') if re.fullmatch(r'(normal|tumor|test)_\d{3}', p.stem)}
    xmls = {p.stem: p for p in raw_dir.rglob('*.xml') if re.fullmatch(r'(tumor|test)_\d{3}', p.stem)}
    if not slides: raise FileNotFoundError(f'no normal_XXX.tif / tumor_XXX.tif / test_XXX.tif under {raw_dir}')
    if optional_import('openslide') is None:
        prov.skip('openslide', 'not installed', 'PIL reads small single-level TIFFs only (real WSIs need openslide)')
    norm = stain_normalizer(slides, args, prov)
    items = plan(raw_dir, args, prov, slides, xmls)
    if args.limit:
        per = defaultdict(list)
        for it in items: per[it[:2]].append(it)
        items = [it for v in per.values() for it in v[:args.limit]]
    prov.step('patches', size=args.patch_size, level=0, per_slide=args.per_slide, excluded=sorted(EXCLUDED),
              rule='fully inside Otsu tissue (and inside tumour annotations for tumour patches)')
    prov.step('rescale', to=args.out_size, note='DPA: x40 768 px -> x10 192 px; train RandomCrop 64, test CenterCrop 64 at load time',
              stored='8-bit RGB PNG (rounded)',
              load="x * 2/255 - 1 per channel by load_dataset (intensity contract 'uint8_to_pm1': DPA's ToTensor + Normalize(0.5, 0.5))")
    missing = sorted({it[2] for it in items} - set(slides))
    if missing: raise FileNotFoundError(f'{len(missing)} slide(s) of the patch lists are not under {raw_dir}, e.g. {missing[0]}')
    rows, open_slides, n_plain, readers = [], {}, 0, set()
    for split, lab, name, kind, x, y in progress(items, 'camelyon16 patches'):
        s = open_slides.get(name) or open_slides.setdefault(name, Slide(slides[name]))
        patch = s.region(x, y, args.patch_size, args.patch_size); readers.add(s.reader)
        if norm is not None:
            try: patch = norm.transform(patch)
            except ValueError: n_plain += 1                      # no tissue, or one colour: nothing to normalise
        patch = resize2d(patch, args.out_size, 1).clip(0, 255).round().astype(np.uint8)
        stem = f'{name}_{kind}_x_{x}_y_{y}_w_{args.patch_size}_h_{args.patch_size}'
        save_image(patch, Path(out_dir) / 'images' / f'{stem}.png')
        rows.append(dict(split=split, subject=name, label=lab, image=f'images/{stem}.png', mask='', brain=''))
        if len(open_slides) > 4: open_slides.pop(next(iter(open_slides)))
    prov.step('read slides', reader=sorted(readers))
    if norm is not None and n_plain:
        prov.note(f'{n_plain} patch(es) had too little tissue or a single colour for stain normalisation: kept as they were')
    return rows


def stain_normalizer(slides, args, prov):
    "A normaliser fitted to DPA's reference (steps 5-6): Vahadane, or Macenko on request; None where skipped (recorded)."
    vahadane = 'Vahadane stain normalisation (DPA steps 5-6)'
    method = 'macenko' if args.stain_norm == 'macenko' else 'vahadane'      # auto -> vahadane when there is a reference
    if args.stain_norm == 'none':
        prov.skip(vahadane, 'switched off (--stain-norm none)', 'patches keep their original staining'); return None
    if args.stain_target:
        from PIL import Image
        with Image.open(args.stain_target) as im: target, src = np.asarray(im.convert('RGB')), str(args.stain_target)
    elif TARGET[0] in slides:
        (x, y, side), sl = TARGET[1], Slide(slides[TARGET[0]])
        if x + side > sl.size[0] or y + side > sl.size[1]:
            raise ValueError(f'{slides[TARGET[0]]}: {sl.size} px is too small for DPA\'s stain reference crop at ({x}, {y})')
        target = resize2d(sl.region(x, y, side, side), side // 4, 1).clip(0, 255).astype(np.uint8)
        src = f'{TARGET[0]} level 0 crop x={x} y={y} side={side} (downsampled x4 for the fit)'
    elif args.stain_norm != 'auto':
        raise FileNotFoundError(f'--stain-norm {args.stain_norm} needs a reference: {TARGET[0]}.tif under --raw-dir, '
                                f'or --stain-target')
    else:
        prov.skip(vahadane, f'no reference ({TARGET[0]}.tif absent, no --stain-target)', 'patches keep their original staining')
        return None
    if method == 'vahadane':
        params = dict(lambda_=0.1, beta=0.15, n_pixels=10000, seed=0, lambda_code=0.01)
        norm = VahadaneNormalizer(**params).fit(target)
        desc = ('Vahadane et al. 2016, sparse non-negative stain separation (uad_notebooks.prepare.VahadaneNormalizer, '
                'a numpy re-implementation from the paper)')
    else:
        params = dict(beta=0.15, alpha=1.0)
        norm = MacenkoNormalizer(**params).fit(target)
        desc = 'Macenko et al. 2009 (uad_notebooks.prepare.MacenkoNormalizer)'
        prov.skip(vahadane, 'not chosen (--stain-norm macenko)', 'Macenko normalisation (numpy)')
    prov.step('stain normalisation', method=method, description=desc, params=params, target=src,
              stains_rgb_od=np.round(norm.stains.T, 4).tolist(), max_concentration=np.round(norm.max_conc, 4).tolist())
    return norm


def add_arguments(p):
    p.add_argument('--patch-size', type=int, default=768, help='patch side at level 0 (x40), DPA: 768')
    p.add_argument('--out-size', type=int, default=192, help='saved patch side (DPA x10: 192)')
    p.add_argument('--per-slide', type=int, default=50, help='at most this many patches per slide (DPA: 50)')
    p.add_argument('--stain-norm', choices=['auto', 'vahadane', 'macenko', 'none'], default='auto',
                   help="stain normalisation to DPA's reference crop of normal_056 (or --stain-target): vahadane (DPA's "
                        "method), macenko, or none; auto = vahadane when a reference is there, else none (recorded)")
    p.add_argument('--stain-target', default=None, help='an RGB image to use as the stain reference instead')


SCRIPT = DatasetScript(
    name='camelyon16',
    description='CAMELYON16: 399 H&E whole-slide images of sentinel lymph nodes (270 training: 159 normal, 111 with '
                'metastases and lesion annotations; 129 test with reference labels).',
    citation='Ehteshami Bejnordi et al., JAMA 318 (2017) 2199-2210; Shvetsova et al., IEEE Access 2021 (patches)',
    licence='CC0 1.0 [unverified]',
    disk='about 700 GB of slides; prepared 192x192 PNG patches about 1.5 GB',
    manual=ManualStep('camelyon16', 'https://camelyon17.grand-challenge.org/Data/ (CAMELYON16 folders; also AWS s3://camelyon-dataset)',
                      ['Download CAMELYON16/training/normal, training/tumor, training/lesion_annotations,',
                       'testing/images, testing/lesion_annotations and testing/reference.csv',
                       '(the links left the challenge page, DPA issue #3; the public AWS bucket holds a copy)'],
                      ['**/normal_*.tif', '**/tumor_*.tif', '**/tumor_*.xml'], 'CC0'),
    split_files=published(DPA, [f'folds/train_test_split/camelyon16/healthy/{l}' for l in LISTS]),
    prepare=prepare, add_arguments=add_arguments,
    expected=lambda p: EXPECTED if p.get('split_variant') == 'faithful' and not p.get('limit') else None)
SCRIPT.split_files.local = lambda split_dir, path: Path(split_dir) / f'camelyon16_{"_".join(path.split("/")[-2:])}.txt'

if __name__ == '__main__':
    sys.exit(main(SCRIPT))

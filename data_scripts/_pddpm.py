"""The pDDPM / mDDPM brain-MRI chain shared by ixi.py, brats2021.py and mslub.py (FinnBehrendt/patched-Diffusion-Models-UAD, preprocessing/prepare_*.sh and src/datamodules/create_dataset.py).

Offline (pDDPM `preprocessing/prepare_*.sh`): resample to 1 mm and reorient; skull strip (HD-BET); affine
registration to the SRI24 T1 brain template (ANTs); crop to the brain's bounding box; N4 bias correction.
Online (pDDPM dataloader, done here once): CurvatureFlow denoising; crop/pad to 192x192x100; rescale to [0, 1]
between the 1st and 99th percentile inside the brain; resample to 2 mm -> 96x96x50.
Missing tools are skipped and recorded in provenance.json; nothing here is a hard dependency.
"""
from __future__ import annotations
import shutil, subprocess, tempfile
from pathlib import Path

import numpy as np
from uad_notebooks.prepare import (crop_or_pad, crop_to_mask, optional_import, percentile_scale, resample,
                                   save_image, slice_labels, threshold_mask, volume_to_slices)


def load(path):
    "(data float32, affine, zooms) of a NIfTI file, reoriented to the closest canonical (RAS) orientation."
    import nibabel as nib
    img = nib.as_closest_canonical(nib.load(str(path)))
    return np.asarray(img.dataobj, dtype=np.float32), img.affine, img.header.get_zooms()[:3]


def hd_bet(img: np.ndarray):
    "Brain mask of a 1 mm volume from the HD-BET CLI if it is installed, else None."
    exe = shutil.which('hd-bet')
    if exe is None: return None
    with tempfile.TemporaryDirectory() as td:
        src, out = Path(td) / 'in.nii.gz', Path(td) / 'brain.nii.gz'
        save_image(img.astype(np.float32), src)
        subprocess.run([exe, '-i', str(src), '-o', str(out), '-device', 'cpu', '-mode', 'fast', '-tta', '0'],
                       check=True, capture_output=True)
        mask = Path(td) / 'brain_mask.nii.gz'
        return load(mask)[0] > 0 if mask.exists() else None


class Chain:
    "Runs the chain on one subject; records each step (and each skipped tool) once in the provenance."
    def __init__(self, prov, args, *, resample_1mm: bool, skull_strip: str, sri24=None, n4_mask: bool = True):
        self.prov, self.args, self.resample_1mm, self.skull_strip = prov, args, resample_1mm, skull_strip
        self.sitk, self.ants, self.n4_mask = optional_import('SimpleITK'), optional_import('ants'), n4_mask
        self.n4 = self.sitk is not None and not getattr(args, 'no_n4', False)
        self.n4_shrink = int(getattr(args, 'n4_shrink', 4))
        if self.n4_shrink < 1: raise ValueError(f'--n4-shrink must be >= 1, got {self.n4_shrink}')
        self.sri24 = sri24
        prov.step('reorient', to='RAS (nibabel as_closest_canonical; pDDPM uses RAI: same axes, flipped signs)')
        if resample_1mm: prov.step('resample 1 mm', tool='scipy.ndimage.zoom order 3 (pDDPM: ANTs B-spline)')
        if skull_strip == 'hd-bet' and shutil.which('hd-bet') is None:
            prov.skip('HD-BET', 'hd-bet CLI not installed', 'Otsu threshold mask (largest component, holes filled) - NOT skull stripping')
        if skull_strip == 'given': prov.step('brain mask', source='mask shipped with the data / skull-stripped input (> 0)')
        if self.ants is None or sri24 is None:
            prov.skip('ANTs registration to SRI24', 'antspyx not installed or --sri24 template not given',
                      'volumes stay in their own space')
        else: prov.step('register', tool='ants.registration Affine to SRI24 T1 brain template', template=str(sri24))
        prov.step('crop to brain bounding box')
        if self.sitk is None:
            prov.skip('N4 bias correction', 'SimpleITK not installed (pDDPM uses ANTs N4)', 'no bias correction')
            prov.skip('CurvatureFlow denoising', 'SimpleITK not installed', 'no denoising')
        else:
            if self.n4: prov.step('N4', tool='SimpleITK N4BiasFieldCorrectionImageFilter', iterations='4 x 200',
                                  convergence=5e-4, mask='brain' if n4_mask else 'none (as pDDPM does for BraTS)',
                                  shrink_factor=self.n4_shrink,
                                  note='field fitted on the volume shrunk by shrink_factor per axis (at most n // 4 '
                                       'on an axis of n voxels), divided out at full resolution; ANTsPy '
                                       'n4_bias_field_correction shrinks by 4 by default and pDDPM passes no factor '
                                       '[INF]. pDDPM weights by the brain mask smoothed with sigma 1, a binary mask '
                                       'here')
            else: prov.skip('N4 bias correction', '--no-n4 given', 'no bias correction')
            prov.step('CurvatureFlow', timeStep=0.125, iterations=3)
        prov.step('crop or pad', shape=list(args.crop_shape))
        prov.step('percentile scale', lo=1, hi=99, inside='brain mask', range='[0, 1]')
        prov.step('resample', spacing_mm=args.out_spacing, images='order 3', labels='nearest')

    def __call__(self, img_path, seg_path=None, mask_path=None):
        img, aff, zooms = load(img_path)
        seg = load(seg_path)[0] > 0 if seg_path else None
        if seg is not None and seg.shape != img.shape:   # else it would be cropped out of step with the image
            raise ValueError(f'{seg_path}: shape {seg.shape} differs from image {img_path} {img.shape}')
        if self.resample_1mm and not np.allclose(zooms, 1):
            img = resample(img, zooms, (1, 1, 1), 3)
            if seg is not None: seg = resample(seg.astype(np.uint8), zooms, (1, 1, 1), 0) > 0
        if mask_path:
            brain, _, mz = load(mask_path)
            if self.resample_1mm and not np.allclose(mz, 1): brain = resample((brain > 0).astype(np.uint8), mz, (1, 1, 1), 0)
            brain = brain > 0
            if brain.shape != img.shape:
                raise ValueError(f'{mask_path}: shape {brain.shape} differs from image {img_path} {img.shape}')
        elif self.skull_strip == 'given': brain = img > 0
        else:
            brain = hd_bet(img) if self.skull_strip == 'hd-bet' else None
            if brain is None: brain = threshold_mask(img)
        if self.ants is not None and self.sri24 is not None:
            img, brain, seg = self._register(img, brain, seg)
        arrays = [img] + ([seg.astype(np.uint8)] if seg is not None else [])
        brain, *arrays = crop_to_mask(brain.astype(np.uint8), *arrays)
        img = arrays[0]; seg = arrays[1] if seg is not None else None
        if self.sitk is not None: img = self._n4_curvature(img, brain)   # pDDPM: N4 offline, CurvatureFlow on load
        shape = tuple(self.args.crop_shape)
        img, brain = crop_or_pad(img, shape), crop_or_pad(brain, shape)
        seg = crop_or_pad(seg, shape) if seg is not None else None
        img = percentile_scale(img, brain, 1, 99)
        f = (1, 1, 1), (self.args.out_spacing,) * 3
        img = np.clip(resample(img, *f, order=3), 0, 1)
        brain = resample(brain, *f, order=0)
        img = img * (brain > 0)
        seg = resample(seg, *f, order=0) if seg is not None else None
        return img.astype(np.float32), brain.astype(np.uint8), None if seg is None else seg.astype(np.uint8)

    def _register(self, img, brain, seg):
        "Affine registration of a 1 mm RAS volume onto the template; the template's grid and voxel order come back."
        ants = self.ants
        fixed = ants.image_read(str(self.sri24))
        # the arrays are RAS (nibabel canonical) at 1 mm; ITK's physical space is LPS, as when ants reads a NIfTI
        to_ants = lambda a: ants.from_numpy(np.asarray(a, np.float32), origin=(0., 0., 0.), spacing=(1., 1., 1.),
                                            direction=np.diag([-1., -1., 1.]))
        reg = ants.registration(fixed=fixed, moving=to_ants(img), type_of_transform='Affine')
        warp = lambda a, interp: ants.apply_transforms(fixed, to_ants(a), reg['fwdtransforms'], interpolator=interp).numpy()
        return (reg['warpedmovout'].numpy(), warp(brain, 'nearestNeighbor') > 0,
                None if seg is None else warp(seg, 'nearestNeighbor') > 0)

    def _n4_curvature(self, img, brain):
        sitk = self.sitk
        im = sitk.GetImageFromArray(img.astype(np.float32))
        if self.n4:
            f = sitk.N4BiasFieldCorrectionImageFilter()
            f.SetMaximumNumberOfIterations([200] * 4); f.SetConvergenceThreshold(5e-4)
            mk = sitk.GetImageFromArray((brain if self.n4_mask else np.ones_like(brain)).astype(np.uint8))
            s = [max(1, min(self.n4_shrink, n // 4)) for n in im.GetSize()]   # keep >= 4 voxels per axis
            small, small_mk = (sitk.Shrink(im, s), sitk.Shrink(mk, s)) if max(s) > 1 else (im, mk)
            f.Execute(small, small_mk)            # fit the field on the shrunk volume ...
            im = im / sitk.Exp(f.GetLogBiasFieldAsImage(im))   # ... and divide it out at full resolution
        im = sitk.CurvatureFlow(im, timeStep=0.125, numberOfIterations=3)
        return sitk.GetArrayFromImage(im)


def write_subject(out_dir, split, subject, img, brain, seg, rows, dup: int = 0):
    "Save one prepared volume (+ brain mask, + segmentation) and append one manifest row per axial slice."
    out_dir = Path(out_dir)
    im = f'images/{subject}.nii.gz'; br = f'brains/{subject}_mask.nii.gz'
    if not (out_dir / im).exists():
        save_image(img, out_dir / im); save_image(brain, out_dir / br)
        if seg is not None: save_image(seg, out_dir / f'masks/{subject}_seg.nii.gz')
    labels = slice_labels(volume_to_slices(seg)) if seg is not None else np.zeros(img.shape[-1], np.int64)
    for z in range(img.shape[-1]):
        rows.append(dict(split=split, subject=subject, label=int(labels[z]), image=im,
                         mask=f'masks/{subject}_seg.nii.gz' if seg is not None else '', brain=br, slice=z))


def add_chain_arguments(p):
    p.add_argument('--crop-shape', type=int, nargs=3, default=[192, 192, 100], help='crop/pad at 1 mm (mDDPM: 192 192 100)')
    p.add_argument('--out-spacing', type=float, default=2.0, help='final voxel size in mm (pDDPM: 2 -> 96x96x50)')
    p.add_argument('--sri24', default=None, help='SRI24 T1 brain template (NIfTI) for registration; needs antspyx')
    p.add_argument('--no-n4', action='store_true', help='skip N4 bias correction (recorded as skipped)')
    p.add_argument('--n4-shrink', type=int, default=4,
                   help='N4 fits the bias field on the volume shrunk by this factor per axis and divides it out at '
                        'full resolution (ANTsPy default 4; 1 = fit at full resolution: minutes instead of seconds '
                        'per volume)')


def pddpm_split(lists: dict, variant: str, prov) -> dict:
    "Faithful published lists, or cleaned ones (duplicates and cross-split subjects removed); records the variant."
    from uad_notebooks.prepare import clean_split
    n_dup = {k: len(v) - len(set(v)) for k, v in lists.items()}
    shared = {k: sorted(set(v) & set(lists.get('test', []))) for k, v in lists.items() if k != 'test'}
    prov.step('published split', rows={k: len(v) for k, v in lists.items()}, duplicates=n_dup,
              shared_with_test={k: len(v) for k, v in shared.items()})
    prov.d['split_variant'] = variant
    if variant == 'clean':
        lists, removed = clean_split(lists)
        prov.step('clean split', removed={k: len(v) for k, v in removed.items()})
    return lists

"""Shared command-line plumbing of the dataset scripts: `download`, `prepare` and `check` sub-commands.

Each `data_scripts/<name>.py` builds a `DatasetScript` (what the dataset is, where it comes from, how to prepare it,
the counts the spec expects) and calls `run(script)`. The steps themselves live in the package:
`uad_notebooks.download` (fetching) and `uad_notebooks.prepare` (preprocessing, manifest, provenance, check).
"""
from __future__ import annotations
import argparse, copy, csv, gzip, hashlib, json, re, shutil, sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))   # run from a checkout without `pip install -e .`

from uad_notebooks.download import (ChecksumError, ManualStep, Resource, SplitFiles, check_upstream,  # noqa: E402,F401
                                    fetch_resources, fetch_split_files, sha256sum, verify_split_file)
from uad_notebooks.data import intensity_record  # noqa: E402
from uad_notebooks.prepare import Provenance, check_prepared, write_manifest  # noqa: E402

# Pinned commits of the papers' public repositories (checked against snapshots of the repositories, see splits/README.md).
GEORGESCU = 'lilygeorgescu/MAE-medical-anomaly-detection', '636824244c043b8eb38b6d6a0c057891b87825ae'
MDDPM = 'hasan1292/mDDPM', '016762ef0c162dab26b3de49e44c712f1aeeefaa'
DPA = 'ninatu/anomaly_detection', 'ada92019d53b3861f4e334f3d0c4b2ceac70b606'
SHIPPED = Path(__file__).resolve().parent / 'splits'   # copies of the published split files (see splits/README.md)


def read_pins(path=SHIPPED / 'pins.csv') -> dict:
    "{(repo, path): row} of the pin table: every published split file with its commit, bytes, SHA-256, git blob, copy."
    with open(path, newline='') as f: rows = list(csv.DictReader(f))
    return {(r['repo'], r['path']): r for r in rows}


PINS = read_pins()


def published(repo_commit, paths, **kw) -> SplitFiles:
    """SplitFiles of `paths` in `repo_commit` with every file pinned (SHA-256 and commit from splits/pins.csv) and its
    shipped copy (plain or .gz) where the checkout holds it. A path without a pin is an error: nothing is trusted on
    first use."""
    repo, commit = repo_commit
    missing = [p for p in paths if (repo, p) not in PINS]
    if missing: raise ValueError(f'no pin in {SHIPPED / "pins.csv"} for {repo} {missing}')
    rows = {p: PINS[repo, p] for p in paths}
    return SplitFiles(repo, commit, list(paths), sha256={p: r['sha256'] for p, r in rows.items()},
                      commits={p: r['commit'] for p, r in rows.items() if r['commit'] != commit},
                      shipped={p: SHIPPED / r['shipped'] for p, r in rows.items()
                               if r['shipped'] and (SHIPPED / r['shipped']).exists()}, **kw)


def shipped_bytes(src) -> bytes:
    "The published bytes of a shipped copy (`.gz` copies are decompressed)."
    data = Path(src).read_bytes()
    return gzip.decompress(data) if str(src).endswith('.gz') else data


def install_published(spec: SplitFiles, split_dir) -> dict:
    "Put the shipped copies of `spec` into `split_dir` where missing, verify every one there against its pin. Offline."
    out = {}
    for p, src in spec.shipped.items():
        data = shipped_bytes(src)
        if hashlib.sha256(data).hexdigest() != spec.sha256[p]:    # a checkout with CRLF line endings holds the same text
            data = data.replace(b'\r\n', b'\n')
        if hashlib.sha256(data).hexdigest() != spec.sha256[p]:    # a damaged checkout must not pass as the published list
            raise ChecksumError(f'{src}: its content does not hash to the pin of {p} ({spec.sha256[p]})')
        dest = spec.local(split_dir, p)
        if dest.exists():
            try: verify_split_file(dest, spec.sha256[p])
            except ChecksumError as e:
                raise ChecksumError(f'{e}; the hash of {p} is pinned in this repository: delete {dest} to use the '
                                    f'shipped copy (or pass --own-splits for lists of your own)') from None
            out[p] = 'present, matches the pin'
        else:
            dest.parent.mkdir(parents=True, exist_ok=True); dest.write_bytes(data); out[p] = 'installed from the shipped copy'
    return out


@dataclass
class DatasetScript:
    "Everything a dataset script declares; `run` turns it into a CLI."
    name: str
    description: str # what the dataset is, one paragraph
    citation: str
    licence: str
    disk: str # approximate disk space, raw and prepared
    prepare: Callable # prepare(raw_dir, out_dir, args, prov) -> list of manifest rows
    resources: list = field(default_factory=list) # automated downloads (Resource)
    manual: ManualStep | None = None # licensed data a person must fetch
    split_files: SplitFiles | None = None # the paper's published split files
    expected: Callable | None = None # expected(params: dict) -> {(split, label): n} or None where the spec has none
    unit: str = 'rows' # what `expected` counts: 'rows' or 'volumes'
    add_arguments: Callable | None = None # add_arguments(prepare_subparser)
    alt_layout: Callable | None = None # alt_layout(raw_dir) -> True where another documented layout (a subset folder) is there


def split_dir_of(args) -> Path:
    return Path(args.split_dir) if getattr(args, 'split_dir', None) else Path(args.raw_dir) / 'splits'


def published_split_dir(args, script: DatasetScript) -> Path:
    """The split folder, with the shipped (pinned) split files of `script` installed there where missing (offline);
    with --own-splits, the folder as it is (the user's own lists)."""
    sd = split_dir_of(args)
    if script.split_files is not None and not getattr(args, 'own_splits', False): install_published(script.split_files, sd)
    return sd


def record_split_files(prov: Provenance, script: DatasetScript, split_dir: Path, variant: str, paths=None, own=None):
    """Verify the split files used against their pins (or, for a spec without pins, the hashes `download` recorded)
    and record them (URL at the pinned commit, SHA-256, how checked) and the variant. `own` (default: the prepare
    run's --own-splits): the user's own lists in the published format, hashed and recorded as such, not checked."""
    spec = script.split_files
    if own is None: own = bool(prov.d.get('params', {}).get('own_splits'))
    rec = Path(split_dir) / 'split_hashes.json'          # written by `download` when it fetched the files
    recorded = json.loads(rec.read_text()).get('sha256', {}) if rec.exists() else {}
    for p in (spec.paths if paths is None else paths):
        f = spec.local(split_dir, p)
        if not f.exists(): continue
        want = None if own else spec.sha256.get(p) or recorded.get(p)
        try: h = verify_split_file(f, want)
        except ChecksumError as e:
            why = ('its hash is pinned in this repository: delete it to use the shipped copy, or pass --own-splits '
                   'for lists of your own' if p in spec.sha256 else
                   'it changed since its hash was recorded when fetched: delete it and run `download` again')
            raise ChecksumError(f'{e}; {why} ({spec.url(p)})') from None
        check = ('own list (--own-splits): not the published file, not checked' if own else
                 'pinned in the repository' if p in spec.sha256 else
                 'recorded at download (trust on first use)' if want else 'unverified')
        prov.d['split_files'][p] = dict(url=spec.url(p), sha256=h, local=str(f), verified_against=bool(want),
                                        pinned=spec.sha256.get(p), check=check)
    if own: prov.d['split_files_own'] = True
    prov.d['split_variant'] = variant


def need(path) -> Path:
    "`path` if it exists, else a clear error saying how to obtain a published split file."
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f'split file {path} missing: run the script\'s `download` step on a connected machine '
                                f'(it fetches the published split files at a pinned commit), pass --split-dir, '
                                f'or use --split-variant generated')
    return path


def load_grey8(path) -> np.ndarray:
    """An image file as 8-bit grey (H, W) uint8, the values as saved: 8-bit images unchanged (colour to luminance by
    PIL), 16-bit ones scaled by 255 / 65535 (a fixed map, nothing per image)."""
    from PIL import Image
    with Image.open(path) as im:
        if im.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
            a = np.asarray(im, dtype=np.float64)
            if a.min() < 0 or a.max() > 65535: raise ValueError(f'{path}: {im.mode} values outside 0..65535')
            return np.round(a * 255 / 65535).astype(np.uint8)
        return np.asarray(im.convert('L'))


def read_lines(path) -> list:
    "Non-empty stripped lines of a text file."
    return [l.strip() for l in need(path).read_text().splitlines() if l.strip()]


def read_csv(path) -> list:
    with open(need(path), newline='') as f: return list(csv.DictReader(f))


def build_parser(script: DatasetScript) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f'{script.name}.py', description=script.description,
                                epilog=f'Licence: {script.licence}\nCite: {script.citation}\nDisk: {script.disk}',
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest='command', required=True)
    d = sub.add_parser('download', help='fetch the raw data (or print the manual step) and the published split files')
    d.add_argument('--raw-dir', required=True, help='folder for the raw files')
    d.add_argument('--no-splits', action='store_true', help='do not fetch the published split files')
    d.add_argument('--offline', action='store_true',
                   help='install the shipped (pinned) split files without contacting upstream; skip the others')
    d.add_argument('--no-progress', action='store_true')
    pr = sub.add_parser('prepare', help="run the paper's preprocessing and write manifest.csv + provenance.json")
    pr.add_argument('--raw-dir', required=True, help='folder holding the raw files')
    pr.add_argument('--out-dir', required=True, help='prepared-data folder (what load_dataset reads)')
    pr.add_argument('--overwrite', action='store_true', help='replace an existing prepared folder')
    pr.add_argument('--limit', type=int, default=None, help='prepare at most this many subjects per split (smoke runs)')
    if script.split_files is not None:
        pr.add_argument('--split-dir', default=None, help='folder with the published split files (default RAW/splits)')
        pr.add_argument('--split-variant', choices=['faithful', 'clean', 'generated'], default='faithful',
                        help="faithful: the published lists as they are; clean: de-duplicated, no subject in two splits; "
                             "generated: a seeded patient-level split (no published files needed)")
        pr.add_argument('--own-splits', action='store_true',
                        help='the split files in --split-dir are your own lists in the published format (e.g. a test '
                             'layout), not the papers\' files: they are not checked against the pins, and provenance '
                             'records them as your own')
    pr.add_argument('--seed', type=int, default=0, help='seed of any generated split or sampling')
    if script.add_arguments: script.add_arguments(pr)
    c = sub.add_parser('check', help='validate a prepared folder: files, labels, leaks, counts vs the spec, hashes.csv')
    c.add_argument('--out-dir', required=True)
    c.add_argument('--no-spec-counts', action='store_true', help='do not fail when counts differ from the spec (subsets)')
    return p


def fetch_published(spec: SplitFiles, split_dir, upstream: bool = True, progress: bool = False) -> dict:
    """Install the shipped copies (offline) and, with `upstream`, compare each with the file at its pinned commit and
    download the others (verified against their pins). {path: sha256}."""
    split_dir = Path(split_dir)
    status = install_published(spec, split_dir)
    out = {p: spec.sha256[p] for p in spec.shipped}
    for p in spec.shipped:
        if not upstream: print(f'{p}: {status[p]} (pinned; upstream not contacted)'); continue
        try: check_upstream(spec, p, split_dir, progress); print(f'{p}: {status[p]}; upstream copy verified')
        except ConnectionError as e: print(f'{p}: {status[p]}; could not reach {spec.url(p)} to verify it ({e})')
    rest = copy.copy(spec); rest.shipped = {}; rest.paths = [p for p in spec.paths if p not in spec.shipped]
    return {**out, **fetch_split_files(rest, split_dir, progress=progress, upstream=upstream)}


def cmd_download(script: DatasetScript, args) -> int:
    raw = Path(args.raw_dir); raw.mkdir(parents=True, exist_ok=True)
    if script.resources:
        hashes = fetch_resources(script.resources, raw, progress=not args.no_progress)
        (raw / 'download_hashes.json').write_text(json.dumps(hashes, indent=1))
        print(f'downloaded {len(hashes)} file(s) into {raw}')
    if script.split_files is not None and not args.no_splits:
        hashes = fetch_published(script.split_files, raw / 'splits', upstream=not args.offline)
        rec = raw / 'splits' / 'split_hashes.json'
        old = json.loads(rec.read_text()).get('sha256', {}) if rec.exists() else {}
        rec.write_text(json.dumps(dict(repo=script.split_files.repo, commit=script.split_files.commit,
                                       sha256={**old, **hashes}, pinned=sorted(script.split_files.sha256)), indent=1))
        print(f'{len(hashes)} split file(s) of {script.split_files.repo}@{script.split_files.commit[:7]} in {raw / "splits"}')
    if script.manual is not None:
        miss = script.manual.missing(raw)
        if miss:
            print(script.manual.instructions(raw)); print(f'still missing: {miss}')
            return 2
        print(f'found the manually placed files of {script.name} in {raw}')
    return 0


def cmd_prepare(script: DatasetScript, args) -> int:
    raw, out = Path(args.raw_dir), Path(args.out_dir)
    if not raw.is_dir(): raise FileNotFoundError(f'--raw-dir {raw} does not exist; run `{script.name}.py download` first')
    if script.manual is not None and not (script.alt_layout and script.alt_layout(raw)): script.manual.check(raw)
    if (out / 'manifest.csv').exists():
        if not args.overwrite: raise FileExistsError(f'{out} already holds a prepared dataset; pass --overwrite to replace it')
        shutil.rmtree(out)
    params = {k: v for k, v in vars(args).items() if k not in ('command',)}
    prov = Provenance(script.name, script.description.split('.')[0], params)
    prov.d['intensity'] = intensity_record(script.name)     # what load_dataset(normalize='auto') applies to the stored values
    rows = script.prepare(raw, out, args, prov)
    write_manifest(rows, out)
    prov.write(out, rows)
    print(f'prepared {len(rows)} rows into {out}')
    return 0


def cmd_check(script: DatasetScript, args) -> int:
    out = Path(args.out_dir)
    prov = json.loads((out / 'provenance.json').read_text()) if (out / 'provenance.json').exists() else {}
    subset = prov.get('subset')
    expected = script.expected({**prov.get('params', {}), '_subset': bool(subset)}) if script.expected else None
    rep = check_prepared(out, expected=expected, unit=script.unit)
    print(json.dumps(rep, indent=1))
    if expected is None: print(f'note: the spec gives no per-split counts for {script.name} in this configuration')
    if prov.get('split_variant'): print(f"split variant: {prov['split_variant']}")
    if rep['errors']: print('CHECK FAILED'); return 1
    if subset and expected:
        print(f"subset of the dataset ({subset.get('images', '?')} images from {subset.get('source', '?')}): its counts "
              f"are not expected to match the spec's full-dataset numbers (unit: {script.unit}):")
        for (sp, lab), n in sorted(expected.items()):
            print(f"  {sp}/{lab}: {rep['counts'].get(f'{sp}/{lab}', 0)} here, {n} in the spec")
        print('check passed (subset)'); return 0
    if rep['count_mismatches'] and not args.no_spec_counts:
        print('COUNTS DIFFER FROM THE SPEC (use --no-spec-counts for a subset)'); return 1
    print('check passed'); return 0


def run(script: DatasetScript, argv=None) -> int:
    "Parse `argv` and run the sub-command; returns the exit code."
    args = build_parser(script).parse_args(argv)
    return {'download': cmd_download, 'prepare': cmd_prepare, 'check': cmd_check}[args.command](script, args)


def progress(iterable, desc: str, total=None):
    "tqdm progress bar over the long loops of `prepare` (to stderr)."
    from tqdm.auto import tqdm
    return tqdm(iterable, desc=desc, total=total, unit='item', leave=False)


def subject_of(name: str, pattern: str) -> str:
    "The first match of `pattern` in `name` (e.g. an IXI or BraTS id inside a split-file entry)."
    m = re.search(pattern, name)
    if not m: raise ValueError(f'cannot find a subject id ({pattern}) in {name!r}')
    return m.group(0)


def main(script: DatasetScript, argv=None) -> int:
    "Command-line entry: like `run`, but a bad input or a missing file prints one clear line instead of a traceback."
    try: return run(script, argv)
    except (FileNotFoundError, FileExistsError, ValueError, ConnectionError, RuntimeError) as e:   # ChecksumError is a ValueError
        print(f'{script.name}: error: {e}', file=sys.stderr)
        return 1

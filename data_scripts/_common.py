"""Shared command-line plumbing of the dataset scripts: `download`, `prepare` and `check` sub-commands.

Each `data_scripts/<name>.py` builds a `DatasetScript` (what the dataset is, where it comes from, how to prepare it,
the counts the spec expects) and calls `run(script)`. The steps themselves live in the package:
`uad_notebooks.download` (fetching) and `uad_notebooks.prepare` (preprocessing, manifest, provenance, check).
"""
from __future__ import annotations
import argparse, csv, json, re, shutil, sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))   # run from a checkout without `pip install -e .`

from uad_notebooks.download import (ChecksumError, ManualStep, Resource, SplitFiles, fetch_resources,  # noqa: E402,F401
                                    fetch_split_files, install_shipped, sha256sum, verify_split_file)
from uad_notebooks.prepare import Provenance, check_prepared, write_manifest  # noqa: E402

# Pinned commits of the papers' public repositories (full hashes as held by the public code index).
GEORGESCU = 'lilygeorgescu/MAE-medical-anomaly-detection', '636824244c043b8eb38b6d6a0c057891b87825ae'
MDDPM = 'hasan1292/mDDPM', '016762ef0c162dab26b3de49e44c712f1aeeefaa'
MDDPM_ALT = '7fb0174c55cc4ca526191df9c8c1514548cea48d'   # commit at which the index held the other split CSVs
DPA = 'ninatu/anomaly_detection', 'ada92019d53b3861f4e334f3d0c4b2ceac70b606'
SHIPPED = Path(__file__).resolve().parent / 'splits'   # copies of the split files we could verify (see splits/README.md)


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
    "The split folder, with the shipped (pinned) split files of `script` installed there where missing (offline)."
    sd = split_dir_of(args)
    if script.split_files is not None and script.split_files.shipped: install_shipped(script.split_files, sd)
    return sd


def record_split_files(prov: Provenance, script: DatasetScript, split_dir: Path, variant: str, paths=None):
    "Record the split files used (URL at the pinned commit, SHA-256, pinned or first-use) and the variant."
    spec = script.split_files
    rec = Path(split_dir) / 'split_hashes.json'          # written by `download` when it fetched the files
    recorded = json.loads(rec.read_text()).get('sha256', {}) if rec.exists() else {}
    for p in (spec.paths if paths is None else paths):
        f = spec.local(split_dir, p)
        if not f.exists(): continue
        want = spec.sha256.get(p) or recorded.get(p)
        try: h = verify_split_file(f, want)
        except ChecksumError as e:
            why = ('its hash is pinned in this repository: delete it to use the shipped copy' if p in spec.sha256 else
                   'it changed since its hash was recorded when fetched: delete it and run `download` again')
            raise ChecksumError(f'{e}; {why} ({spec.url(p)})') from None
        prov.d['split_files'][p] = dict(url=spec.url(p), sha256=h, local=str(f), verified_against=bool(want),
                                        check='pinned in the repository' if p in spec.sha256 else
                                        'recorded at download (trust on first use)' if want else 'unverified')
    prov.d['split_variant'] = variant


def need(path) -> Path:
    "`path` if it exists, else a clear error saying how to obtain a published split file."
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f'split file {path} missing: run the script\'s `download` step on a connected machine '
                                f'(it fetches the published split files at a pinned commit), pass --split-dir, '
                                f'or use --split-variant generated')
    return path


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
    pr.add_argument('--seed', type=int, default=0, help='seed of any generated split or sampling')
    if script.add_arguments: script.add_arguments(pr)
    c = sub.add_parser('check', help='validate a prepared folder: files, labels, leaks, counts vs the spec, hashes.csv')
    c.add_argument('--out-dir', required=True)
    c.add_argument('--no-spec-counts', action='store_true', help='do not fail when counts differ from the spec (subsets)')
    return p


def cmd_download(script: DatasetScript, args) -> int:
    raw = Path(args.raw_dir); raw.mkdir(parents=True, exist_ok=True)
    if script.resources:
        hashes = fetch_resources(script.resources, raw, progress=not args.no_progress)
        (raw / 'download_hashes.json').write_text(json.dumps(hashes, indent=1))
        print(f'downloaded {len(hashes)} file(s) into {raw}')
    if script.split_files is not None and not args.no_splits:
        hashes = fetch_split_files(script.split_files, raw / 'splits', upstream=not args.offline)
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

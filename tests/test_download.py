"""`uad_notebooks.download` against a real HTTP server on 127.0.0.1 (http.server in a thread): checksums, resume
after an interrupted transfer (Range requests), `.part` files never counted as complete, safe extraction, pinned
split files, and a script's `download` sub-command. No test needs the internet."""
from __future__ import annotations
import hashlib, importlib.util, io, os, tarfile, threading, zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from uad_notebooks.download import (ChecksumError, ManualStep, Resource, SplitFiles, download, extract,
                                    fetch_resources, fetch_split_files, sha256sum, verify_recorded)

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = os.urandom(200_000)


class Server:
    "Files served from memory; `flaky` paths send half the body then drop the connection, once."
    def __init__(self):
        self.files, self.flaky, self.no_range, self.log = {}, set(), set(), []
        outer = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a): pass

            def do_GET(self):
                outer.log.append((self.path, self.headers.get('Range')))
                body = outer.files.get(self.path)
                if body is None: self.send_error(404); return
                start = 0
                rng = self.headers.get('Range')
                if rng and self.path not in outer.no_range:
                    start = int(rng.split('=')[1].split('-')[0])
                    if start >= len(body): self.send_error(416); return
                    self.send_response(206); self.send_header('Content-Range', f'bytes {start}-{len(body) - 1}/{len(body)}')
                else: self.send_response(200)
                part = body[start:]
                self.send_header('Content-Length', str(len(part))); self.end_headers()
                if self.path in outer.flaky:
                    outer.flaky.discard(self.path)
                    self.wfile.write(part[:len(part) // 2]); self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2); return
                self.wfile.write(part)

        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), H)
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def gets(self, path): return [r for p, r in self.log if p == path]


@pytest.fixture
def server():
    s = Server(); yield s; s.httpd.shutdown(); s.httpd.server_close()


SHA = hashlib.sha256(PAYLOAD).hexdigest()


def test_download_verifies_and_never_refetches(server, tmp_path):
    server.files['/a.bin'] = PAYLOAD
    p = download(server.url + '/a.bin', tmp_path / 'a.bin', sha256=SHA, size=len(PAYLOAD), progress=False)
    assert p.read_bytes() == PAYLOAD and not (tmp_path / 'a.bin.part').exists()
    download(server.url + '/a.bin', tmp_path / 'a.bin', sha256=SHA, progress=False)
    assert len(server.gets('/a.bin')) == 1                      # complete and valid: not downloaded again


def test_checksum_mismatch_is_a_clear_error(server, tmp_path):
    server.files['/a.bin'] = PAYLOAD
    with pytest.raises(ChecksumError, match='failed verification.*expected 0000'):
        download(server.url + '/a.bin', tmp_path / 'a.bin', sha256='0' * 64, progress=False)
    assert not (tmp_path / 'a.bin').exists() and not (tmp_path / 'a.bin.part').exists()
    (tmp_path / 'b.bin').write_bytes(b'corrupt')                # a corrupt placed file is reported, not re-used
    with pytest.raises(ChecksumError, match='b.bin'):
        download(server.url + '/a.bin', tmp_path / 'b.bin', sha256=SHA, progress=False)


def test_interrupted_download_resumes_with_range(server, tmp_path):
    server.files['/big.bin'] = PAYLOAD; server.flaky.add('/big.bin')
    dest = tmp_path / 'big.bin'
    with pytest.raises(ConnectionError, match='next call resumes'):
        download(server.url + '/big.bin', dest, sha256=SHA, retries=0, progress=False)
    part = tmp_path / 'big.bin.part'
    assert not dest.exists() and 0 < part.stat().st_size < len(PAYLOAD)   # a .part file is never the result
    n = part.stat().st_size
    download(server.url + '/big.bin', dest, sha256=SHA, progress=False)
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert server.gets('/big.bin') == [None, f'bytes={n}-']     # the second request resumed where the first stopped


def test_retries_resume_within_one_call(server, tmp_path):
    server.files['/big.bin'] = PAYLOAD; server.flaky.add('/big.bin')
    download(server.url + '/big.bin', tmp_path / 'big.bin', sha256=SHA, retries=2, progress=False)
    assert (tmp_path / 'big.bin').read_bytes() == PAYLOAD and server.gets('/big.bin')[1].startswith('bytes=')


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.files['/nr.bin'] = PAYLOAD; server.no_range.add('/nr.bin')
    (tmp_path / 'nr.bin.part').write_bytes(PAYLOAD[:1000])
    download(server.url + '/nr.bin', tmp_path / 'nr.bin', sha256=SHA, progress=False)
    assert (tmp_path / 'nr.bin').read_bytes() == PAYLOAD


def test_http_error_and_no_checksum(server, tmp_path):
    with pytest.raises(ConnectionError, match='HTTP 404'):
        download(server.url + '/missing.bin', tmp_path / 'm.bin', progress=False)
    server.files['/a.bin'] = PAYLOAD
    p = download(server.url + '/a.bin', tmp_path / 'a.bin', progress=False)   # no checksum known: hash recorded by caller
    assert sha256sum(p) == SHA


def _tar_gz(members: dict) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode='w:gz') as t:
        for name, data in members.items():
            info = tarfile.TarInfo(name); info.size = len(data); t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_fetch_resources_extracts_archives(server, tmp_path):
    arc = _tar_gz({'IXI002-Guys-0828-T2.nii.gz': b'x' * 10, 'sub/readme.txt': b'hi'})
    server.files['/IXI-T2.tar'] = arc
    res = [Resource(server.url + '/IXI-T2.tar', 'IXI-T2.tar', sha256=hashlib.sha256(arc).hexdigest(), extract=True)]
    hashes = fetch_resources(res, tmp_path, progress=False)
    assert (tmp_path / 'sub' / 'readme.txt').read_text() == 'hi' and hashes['IXI-T2.tar'] == res[0].sha256
    fetch_resources(res, tmp_path, progress=False)
    assert len(server.gets('/IXI-T2.tar')) == 1


def test_extract_refuses_path_traversal_and_links(tmp_path):
    z = tmp_path / 'evil.zip'
    with zipfile.ZipFile(z, 'w') as f: f.writestr('../../outside.txt', 'x')
    with pytest.raises(ValueError, match='path traversal'): extract(z, tmp_path / 'a')
    t = tmp_path / 'abs.tar.gz'; t.write_bytes(_tar_gz({'/etc/evil': b'x'}))
    with pytest.raises(ValueError, match='outside'): extract(t, tmp_path / 'b')
    t = tmp_path / 'link.tar'
    with tarfile.open(t, 'w') as f:
        info = tarfile.TarInfo('link'); info.type = tarfile.SYMTYPE; info.linkname = '/etc/passwd'; f.addfile(info)
    with pytest.raises(ValueError, match='is a link'): extract(t, tmp_path / 'c')
    assert not (tmp_path / 'outside.txt').exists() and not (tmp_path / 'c' / 'link').exists()
    (tmp_path / 'plain.txt').write_text('not an archive')
    with pytest.raises(ValueError, match='not a zip or tar'): extract(tmp_path / 'plain.txt', tmp_path / 'd')


class LocalSplits(SplitFiles):
    "Published split files served by the local server instead of raw.githubusercontent.com."
    base: str = ''
    def url(self, path): return f'{self.base}/{self.repo}/{self.commits.get(path, self.commit)}/{path}'


def test_split_files_pinned_and_verified(server, tmp_path):
    commit = 'a' * 40
    txt = b'volume_1_slice_0.npy\nvolume_1_slice_1.npy\n'
    server.files[f'/owner/repo/{commit}/dataset/split/brats/normal_training_samples.txt'] = txt
    spec = LocalSplits('owner/repo', commit, ['dataset/split/brats/normal_training_samples.txt', 'dataset/split/opt.txt'],
                       sha256={'dataset/split/brats/normal_training_samples.txt': hashlib.sha256(txt).hexdigest()},
                       optional=['dataset/split/opt.txt'])
    spec.base = server.url
    got = fetch_split_files(spec, tmp_path)                        # the optional file is absent upstream: reported
    assert list(got) == ['dataset/split/brats/normal_training_samples.txt']
    assert verify_recorded(tmp_path, spec) == got
    (tmp_path / 'normal_training_samples.txt').write_bytes(txt + b'volume_9_slice_9.npy\n')   # edited upstream / locally
    with pytest.raises(ChecksumError, match='expected'): verify_recorded(tmp_path, spec)
    bad = LocalSplits('owner/repo', commit, ['x.txt'], sha256={'x.txt': '0' * 64}); bad.base = server.url
    server.files[f'/owner/repo/{commit}/x.txt'] = b'other'
    with pytest.raises(ChecksumError): fetch_split_files(bad, tmp_path / 'bad')


def test_script_download_subcommand(server, tmp_path, capsys):
    "hyper_kvasir.py download against the local server: fetched, extracted, hashes written, not fetched twice."
    spec = importlib.util.spec_from_file_location('ds_hk', ROOT / 'data_scripts' / 'hyper_kvasir.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w') as z: z.writestr('labeled-images/lower-gi-tract/pathological-findings/polyps/a.jpg', b'jpg')
    server.files['/hk.zip'] = buf.getvalue()
    mod.SCRIPT.resources = [Resource(server.url + '/hk.zip', 'hyper-kvasir-labeled-images.zip', extract=True)]
    assert mod.run(mod.SCRIPT, ['download', '--raw-dir', str(tmp_path), '--no-progress']) == 0
    assert (tmp_path / 'labeled-images' / 'lower-gi-tract' / 'pathological-findings' / 'polyps' / 'a.jpg').exists()
    assert 'hyper-kvasir-labeled-images.zip' in (tmp_path / 'download_hashes.json').read_text()
    assert mod.run(mod.SCRIPT, ['download', '--raw-dir', str(tmp_path), '--no-progress']) == 0
    assert len(server.gets('/hk.zip')) == 1


def test_manual_step_instructions(tmp_path):
    m = ManualStep('rsna', 'https://kaggle.com/c/x', ['accept the rules', 'download'], ['stage_2_train_images/*.dcm'], 'rules')
    with pytest.raises(FileNotFoundError, match='accept the rules'): m.check(tmp_path)
    (tmp_path / 'stage_2_train_images').mkdir(); (tmp_path / 'stage_2_train_images' / 'a.dcm').write_bytes(b'')
    assert m.check(tmp_path) == tmp_path


def test_script_fetches_pinned_splits_and_prepare_verifies_them(server, tmp_path, capsys):
    """brats2020.py download: split files from the (local) repository at the pinned commit, hashes recorded; a split
    file edited afterwards makes prepare fail with a clear error."""
    h5py = pytest.importorskip('h5py')
    import numpy as np
    spec = importlib.util.spec_from_file_location('ds_b20', ROOT / 'data_scripts' / 'brats2020.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    commit = mod.GEORGESCU[1]
    paths = mod.SCRIPT.split_files.paths
    for p in paths: server.files[f'/{mod.GEORGESCU[0]}/{commit}/{p}'] = b'volume_1_slice_0.npy\n'
    local = LocalSplits(mod.GEORGESCU[0], commit, paths); local.base = server.url
    mod.SCRIPT.split_files = local
    assert mod.run(mod.SCRIPT, ['download', '--raw-dir', str(tmp_path)]) == 2   # no HDF5 placed yet: manual step
    out = capsys.readouterr().out
    assert 'kaggle datasets download' in out and f'@{commit[:7]}' in out
    rec = (tmp_path / 'splits' / 'split_hashes.json').read_text()
    assert commit in rec and len(list((tmp_path / 'splits').glob('*_samples.txt'))) == 5
    (tmp_path / 'splits' / 'normal_val_samples.txt').write_text('volume_2_slice_0.npy\n')
    d = tmp_path / 'data'; d.mkdir()
    for v in (1, 2):
        with h5py.File(d / f'volume_{v}_slice_0.h5', 'w') as f:
            f['image'] = np.zeros((8, 8, 4)); f['mask'] = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ChecksumError, match='normal_val_samples.txt.*changed since'):
        mod.run(mod.SCRIPT, ['prepare', '--raw-dir', str(tmp_path), '--out-dir', str(tmp_path / 'out')])


def test_shipped_split_files_are_verified_against_upstream(server, tmp_path, capsys):
    """A shipped (pinned) split file is installed offline; with upstream reachable it is compared: the same text
    passes (also with CRLF line endings), another text fails; an unreachable upstream is reported, not fatal."""
    commit, path = 'c' * 40, 'Data/splits/MSLUB_val.csv'
    txt = b',img_name\n0,patient01\n1,patient02\n'
    ship = tmp_path / 'shipped.csv'; ship.write_bytes(txt)
    spec = LocalSplits('owner/repo', commit, [path], sha256={path: hashlib.sha256(txt).hexdigest()}, shipped={path: ship})
    spec.base = server.url
    url = f'/owner/repo/{commit}/{path}'
    server.files[url] = txt.replace(b'\n', b'\r\n')                 # a CRLF copy upstream is the same text
    assert fetch_split_files(spec, tmp_path / 'a') == {path: spec.sha256[path]}
    assert (tmp_path / 'a' / 'MSLUB_val.csv').read_bytes() == txt and 'upstream copy verified' in capsys.readouterr().out
    assert not list((tmp_path / 'a').glob('.upstream*'))           # the comparison copy is removed
    server.files[url] = txt + b'2,patient03\n'                      # upstream differs from the pin: loud failure
    with pytest.raises(ChecksumError, match='not the published'): fetch_split_files(spec, tmp_path / 'b')
    del server.files[url]                                          # upstream gone (404): the pinned copy still serves
    assert fetch_split_files(spec, tmp_path / 'c') == {path: spec.sha256[path]}
    assert 'could not reach' in capsys.readouterr().out
    assert fetch_split_files(spec, tmp_path / 'd', upstream=False) == {path: spec.sha256[path]}
    assert len(server.gets(url)) == 3                               # the offline call did not ask

"""The documentation site (`tools/build_docs.py`): built offline from the notebooks with any warning an error, every
lesson page shows its figures, the navigation follows the learning path, the API reference lists every export, and
headless Chromium opens every page: no console errors, every image loads, every internal link (and anchor)
resolves, every equation is typeset by the local MathJax, and search answers. Screenshots of the front page and of
a method page are saved in `runs/site_check/`.

`UAD_DOCS_NBS=/some/nbs` builds the site from another notebook folder (e.g. a copy executed with
`tools/execute_notebooks.py`). Without Chromium (Debian's `chromium` and `chromium-driver`) the browser check is
skipped with a message, except under CI (`CI` set), where it fails: `.ci/run` installs them.
"""
from __future__ import annotations
import functools, json, os, re, shutil, sys, tempfile, threading, time
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urldefrag, urlsplit
from urllib.request import Request, urlopen

import pytest

from conftest import NBS, ROOT

sys.path.insert(0, str(ROOT / "tools"))
import build_docs  # noqa: E402

SITE_NBS = Path(os.environ.get("UAD_DOCS_NBS", NBS)).resolve()
SHOTS = ROOT / "runs" / "site_check"
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", "--disable-extensions", "--mute-audio"]


def cpu_children() -> float:
    "CPU seconds (user + system) of the finished child processes so far: Sphinx, Chromium, JupyterLab and kernels."
    import resource
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def say(capsys, msg: str):
    "Print past pytest's capture, so that times and the screenshot folder show in a plain `pytest -q` run."
    with capsys.disabled(): print(f"\n[site] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------------- the browser
def chromium_or_skip() -> tuple[str, str]:
    "Paths of Chromium and ChromeDriver; skip (or fail under CI) with the reason when either, or selenium, is missing."
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists() else None)
    missing = [n for n, p in (("chromium", chromium), ("chromium-driver (chromedriver)", driver)) if not p]
    try: import selenium  # noqa: F401
    except ImportError: missing.append("the selenium package (pip install -e '.[docs]')")
    if missing:
        msg = (f"browser check needs {', '.join(missing)}: apt-get install chromium chromium-driver "
               "(.ci/run installs them)")
        if os.environ.get("CI"): pytest.fail(msg)
        pytest.skip(msg)
    return chromium, driver


@contextmanager
def chromium_driver(width: int = 1400, height: int = 1000):
    "A headless Chromium under Selenium, with a fresh profile, console logging on, and no background networking."
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    chromium, driver_path = chromium_or_skip()
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download anything
    profile = tempfile.mkdtemp(prefix="uad-chromium-")
    opts = Options()
    opts.binary_location = chromium
    for f in CHROME_FLAGS + [f"--user-data-dir={profile}", f"--window-size={width},{height}"]: opts.add_argument(f)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    try:
        drv.set_page_load_timeout(60); drv.set_script_timeout(60)
        yield drv
    finally:
        drv.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(drv) -> list[str]:
    "SEVERE console entries since the last call (JS errors, failed loads)."
    return [e["message"] for e in drv.get_log("browser") if e.get("level") == "SEVERE"]


def save_screenshot(drv, path: Path, max_height: int = 5000) -> Path:
    "A full-page PNG (up to `max_height` px) through the DevTools protocol."
    import base64
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = drv.execute_script("return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
    shot = drv.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True,
                                                          "clip": {"x": 0, "y": 0, "width": w, "height": min(h, max_height), "scale": 1}})
    path.write_bytes(base64.b64decode(shot["data"]))
    return path


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *a): pass


@contextmanager
def serve(folder: Path):
    "Serve `folder` on 127.0.0.1 (a free port) in a thread; yields the base URL."
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(folder)))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try: yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    finally: httpd.shutdown(); httpd.server_close()


# Runs in the page: waits for MathJax's first typesetting and for every image, then reports what the check needs.
PAGE_JS = r"""
const done = arguments[arguments.length - 1];
const sleep = ms => new Promise(r => setTimeout(r, ms));
(async () => {
  const t0 = Date.now();
  const maths = [...document.querySelectorAll('.math')];
  if (maths.length) {
    while (!(window.MathJax && MathJax.startup && MathJax.startup.promise) && Date.now() - t0 < 20000) await sleep(50);
    if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  }
  for (const img of document.images) img.loading = 'eager';
  while ([...document.images].some(i => !i.complete) && Date.now() - t0 < 20000) await sleep(50);
  const main = (document.querySelector('main') || document.body).cloneNode(true);
  main.querySelectorAll('pre, code, script, style, textarea, mjx-container, .math').forEach(e => e.remove());
  done({
    images: document.images.length,
    badImages: [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.getAttribute('src')),
    links: [...document.querySelectorAll('a[href]')].map(a => a.href),
    ids: [...document.querySelectorAll('[id]')].map(e => e.id).concat([...document.querySelectorAll('a[name]')].map(a => a.name)),
    maths: maths.length,
    untypeset: maths.filter(e => !e.querySelector('mjx-container')).map(e => e.textContent.slice(0, 80)),
    mathErrors: [...document.querySelectorAll('mjx-merror')].map(e => e.getAttribute('data-mjx-error') || e.textContent),
    rawTex: main.textContent.match(/\$\$?[^$\n]*[\\^_{}][^$\n]*\$\$?/g) || [],
  });
})().catch(e => done({error: String(e && e.stack || e)}));
"""


# ---------------------------------------------------------------------------------------------------- the site
@pytest.fixture(scope="module")
def site(tmp_path_factory):
    "Build the site once for this module: (output folder, build error or None, seconds)."
    out = tmp_path_factory.mktemp("site") / "html"
    t0, c0 = time.perf_counter(), cpu_children()
    try: build_docs.build(SITE_NBS, out, work=out.parent / "work"); err = None
    except (Exception, SystemExit) as e: err = f"{type(e).__name__}: {e}"  # reported by test_site_builds_without_warnings
    return out, err, (time.perf_counter() - t0, cpu_children() - c0)


def _built(site) -> Path:
    out, err, _ = site
    if err: pytest.fail(f"the site did not build:\n{err}")
    return out


def _staged(site) -> dict:
    return json.loads((site[0].parent / "work" / "staged.json").read_text())


def _soup(path: Path, main_only: bool = False):
    "The parsed page; `main_only` parses only its <main> element (the article, not the sidebars; about 30 % less work)."
    from bs4 import BeautifulSoup
    text = path.read_text()
    if main_only and "<main" in text: text = text[text.index("<main"):text.rindex("</main>") + len("</main>")]
    return BeautifulSoup(text, "html.parser")


def _page(out: Path, page: str) -> Path:
    return out / (page.rsplit(".", 1)[0] + ".html")


def test_site_builds_without_warnings(site, capsys):
    out, err, (secs, cpu) = site
    say(capsys, f"built from {SITE_NBS} in {secs:.0f} s (Sphinx CPU {cpu:.0f} s, load average {os.getloadavg()[0]:.1f})")
    assert err is None, f"the site did not build (any Sphinx warning is an error):\n{err}"
    pages = build_docs.source_pages(SITE_NBS)
    missing = [p for p in pages if not _page(out, p).is_file()]
    assert not missing, f"pages without HTML: {missing}"
    assert (out / "searchindex.js").is_file() and (out / "_static" / "mathjax" / "tex-mml-chtml.js").is_file()


def test_navigation_follows_the_learning_path(site):
    out = _built(site)
    nav = _soup(out / "index.html").select_one("nav.bd-docs-nav")
    assert nav is not None, "no navigation sidebar on the front page"
    got, caption = [], None
    for el in nav.find_all(["p", "a"]):
        if el.name == "p" and "caption" in (el.get("class") or []): caption = el.get_text(strip=True); got.append((caption, []))
        elif el.name == "a" and got and "reference" in (el.get("class") or []): got[-1][1].append(el["href"])
    want = [(c, [build_docs._docname(p) + ".html" for p in items])
            for c, items in build_docs.nav_sections(build_docs.source_pages(SITE_NBS))]
    got_top = [(c, [h for h in hrefs if not (h.startswith("api/") and h != "api/index.html")]) for c, hrefs in got]
    assert got_top == want, f"sidebar:\n{got_top}\nexpected (docs/nav.toml):\n{want}"
    numbered = [h for _, hrefs in got for h in hrefs if re.match(r"\d\d", h)]
    assert numbered == sorted(numbered) and len(numbered) >= 20, f"lessons out of order: {numbered}"
    captions = [c for c, _ in got]
    assert captions.index("Foundations") < captions.index("Comparing the methods") < captions.index("For teachers") \
        < captions.index("Datasets") < captions.index("Reproducing the papers")


def test_every_lesson_page_has_its_figures(site, capsys):
    """Each cell that draws a figure (tools/build_docs.draws_figure: top-level plotting, not `#| slow`/`#| gpu`) shows
    an image in its page. Repro notebooks are committed without outputs and are not lessons."""
    out = _built(site)
    lacking, report = {}, []
    for page, info in _staged(site)["pages"].items():
        if Path(page).name.startswith("repro_"): continue
        soup = _soup(_page(out, page), main_only=True)
        cells = soup.select(f"div.cell.tag_{build_docs.FIGURE_TAG}")
        assert len(cells) == info["figure_cells"], f"{page}: {len(cells)} tagged cells in the page, {info['figure_cells']} staged"
        bare = [c for c in cells if not c.select(".cell_output img")]
        for img in soup.select(".cell_output img"):
            assert (_page(out, page).parent / img["src"]).is_file(), f"{page}: image {img['src']} missing from the site"
        if bare:
            firsts = [c.select_one(".cell_input pre").get_text().strip().splitlines()[0][:70] for c in bare]
            lacking[page] = f"{len(bare)} of {len(cells)} figure cells without a figure (first lines: {firsts})"
        if info["figure_cells"]: report.append(f"{page}: {len(cells) - len(bare)}/{len(cells)}")
    say(capsys, "figure cells with a figure: " + "; ".join(report))
    assert not lacking, ("lesson pages without their figures (execute the notebooks with "
                         "tools/execute_notebooks.py and commit them):\n" + "\n".join(f"{k}: {v}" for k, v in lacking.items()))


def test_api_reference_lists_every_export(site):
    import importlib
    from docutils.nodes import make_id
    out = _built(site)
    for mod in build_docs.package_modules():
        page = out / "api" / f"{mod}.html"
        assert page.is_file(), f"no API page for uad_notebooks.{mod}"
        soup = _soup(page, main_only=True)
        ids = {s.get("id") for s in soup.select("section[id]")}
        m = importlib.import_module(f"uad_notebooks.{mod}")
        for name in getattr(m, "__all__", []):
            obj = getattr(m, name)
            shown = getattr(obj, "__name__", name) if callable(obj) else name
            assert make_id(shown) in ids, f"api/{mod}.html has no section for {name}"
        assert soup.select("div.highlight pre"), f"api/{mod}.html shows no signature"


def test_course_pages_are_student_versions(site):
    "Assignments appear as students get them: stubs instead of solutions, no hidden tests, the note that says so."
    out = _built(site)
    pages = [p for p in _staged(site)["pages"] if p.startswith("course/")]
    assert pages, "no course pages in the site"
    for page in pages:
        text = _page(out, page).read_text()
        assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text, f"{page} shows a solution or hidden tests"
        assert "YOUR CODE HERE" in text and "student version" in text, f"{page} is not the student version"


def test_draws_figure_rules():
    d = build_docs.draws_figure
    assert d("fig, ax = plt.subplots()\nax.plot([1, 2])")
    assert d("f = show_grid(x, masks)") and d("fig, vals = mask_ratio_figure(m, x)") and d("plot_roc(s, y)")
    assert d("with torch.no_grad():\n    fig = compare_maps(x, maps)", {"compare_maps"}) and d("g = panel_grid(rows)", {"panel_grid"})
    assert not d("def show(x):\n    plt.imshow(x)")                       # a definition draws nothing
    assert not d("if SHARED.exists():\n    plt.plot([1])")                # conditional: may not run
    assert not d("f = show_grid(x)\nsave_fig(f, p)\nplt.close('all')")     # drawn, then closed
    assert not d("%time x = 1\nprint(x)") and not d("this is not python(")


def test_directives_and_nav_sections(tmp_path):
    dirs, code = build_docs.split_directives("#| export\n#| slow\n\nx = 1\n#| not a directive\n")
    assert dirs == {"export": "", "slow": ""} and code == "x = 1\n#| not a directive\n"
    assert build_docs.is_skipped({"gpu": ""}) and build_docs.is_skipped({"eval": "false"}) and not build_docs.is_skipped({"export": ""})
    pages = ["index.ipynb", "00_core.ipynb", "01a_download.ipynb", "01_data.ipynb", "52_new.ipynb", "50_compare.ipynb",
             "course/README.md", "course/01_x.ipynb", "teaching.ipynb", "datasets.ipynb", "repro_compare.ipynb",
             "repro_mddpm.ipynb", "repro_baseline_ae.ipynb"]
    secs = dict(build_docs.nav_sections(pages))
    assert secs["Foundations"] == ["00_core.ipynb", "01_data.ipynb", "01a_download.ipynb"]
    assert secs["Comparing the methods"] == ["50_compare.ipynb", "52_new.ipynb"]     # a new lesson is picked up
    assert secs["For teachers"] == ["teaching.ipynb", "course/README.md", "course/01_x.ipynb"]
    assert secs["Reproducing the papers"] == ["repro_baseline_ae.ipynb", "repro_mddpm.ipynb", "repro_compare.ipynb"]
    with pytest.raises(SystemExit, match="70_orphan.ipynb"): build_docs.nav_sections(pages + ["70_orphan.ipynb"])


# ---------------------------------------------------------------------------------------------------- in Chromium
def test_every_page_in_chromium(site, capsys):
    out = _built(site)
    chromium_or_skip()
    pages = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.html")
                   if not p.relative_to(out).parts[0].startswith(("_static", "_images", "_sources")))
    t0, c0 = time.perf_counter(), cpu_children()
    problems, seen, links = [], {}, []
    with serve(out) as base, chromium_driver() as drv:
        for rel in pages:
            drv.get(base + rel)
            r = drv.execute_async_script(PAGE_JS)
            errs = console_errors(drv)
            if "error" in r: problems.append(f"{rel}: the page check failed in the browser: {r['error']}"); continue
            seen[rel] = set(r["ids"])
            links += [(rel, h) for h in r["links"]]
            if errs: problems.append(f"{rel}: console errors: {errs[:3]}")
            if r["badImages"]: problems.append(f"{rel}: images that did not load: {r['badImages'][:5]}")
            if r["untypeset"]: problems.append(f"{rel}: {len(r['untypeset'])} of {r['maths']} equations not typeset: {r['untypeset'][:3]}")
            if r["mathErrors"]: problems.append(f"{rel}: MathJax errors: {r['mathErrors'][:3]}")
            if r["rawTex"]: problems.append(f"{rel}: raw TeX left in the text: {r['rawTex'][:3]}")
        # search: the builder's own, answered offline from searchindex.js
        drv.get(base + "search.html?q=patchify")
        t_s = time.time()
        hits = []
        while time.time() - t_s < 20 and not hits:
            hits = drv.execute_script("return [...document.querySelectorAll('#search-results li a')].map(a => a.href)")
            time.sleep(0.2)
        if not any("masking" in h for h in hits): problems.append(f"search for 'patchify' found no masking page: {hits[:5]}")
        errs = console_errors(drv)
        if errs: problems.append(f"search.html?q=patchify: console errors: {errs[:3]}")
        # screenshots for a person to look at
        drv.get(base + "index.html"); drv.execute_async_script(PAGE_JS)
        front = save_screenshot(drv, SHOTS / "front_page.png", max_height=2500)
        method = next((p for p in ("13_mae_uad.html", "44_masked_ddpm.html") if p in seen), pages[0])
        drv.get(base + method); drv.execute_async_script(PAGE_JS)
        shot = save_screenshot(drv, SHOTS / "method_page.png")
        # internal links and their anchors
        for src, href in links:
            if not href.startswith(base): continue
            url, frag = urldefrag(href)
            rel = urlsplit(url).path.lstrip("/") or "index.html"
            if rel.endswith("/"): rel += "index.html"
            if rel in seen:
                if frag and frag not in seen[rel]: problems.append(f"{src}: link to {rel}#{frag}: no such anchor")
                continue
            try:
                with urlopen(Request(url, method="HEAD"), timeout=10) as resp: ok = resp.status == 200
            except Exception: ok = False
            if not ok: problems.append(f"{src}: broken link {href}")
    secs, cpu = time.perf_counter() - t0, cpu_children() - c0
    say(capsys, f"{len(pages)} pages and {len(links)} links checked in Chromium in {secs:.0f} s (browser CPU {cpu:.0f} s, "
                f"load average {os.getloadavg()[0]:.1f}); screenshots: {front} and {shot}")
    assert not problems, f"{len(problems)} problems in the browser:\n" + "\n".join(problems[:60])

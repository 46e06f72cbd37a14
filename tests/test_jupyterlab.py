"""`nbs/60_explorers.ipynb` in a real JupyterLab, in headless Chromium: run all cells, every widget output renders as
an explorer (sliders and a figure), and moving each explorer's slider redraws its figure.

The server runs on 127.0.0.1 with a token, with its own config, data, runtime, settings and workspace folders, on a
copy of the notebook (outputs cleared) placed beside links to the rest of the repository, so relative paths still
resolve and nothing under `nbs/` is written (no autosave into the source). The server and every process it started
are shut down at the end, whatever happens. Skipped without Chromium, except under CI (see tests/test_site.py).
"""
from __future__ import annotations
import json, os, re, secrets, signal, socket, subprocess, sys, time
from pathlib import Path
from urllib.request import Request, urlopen

from conftest import NBS, ROOT
from test_site import chromium_driver, chromium_or_skip, console_errors, cpu_children, save_screenshot, say

NOTEBOOK = "60_explorers.ipynb"
SHOTS = ROOT / "runs" / "site_check"
RUN_TIMEOUT = 420  # seconds for "Run All Cells" (the notebook trains three small models unless they are cached)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def _workspace(tmp: Path) -> Path:
    "tmp/repo: links to the repository's top-level entries, and nbs/ with links to every file but a cleared copy of the notebook."
    import nbformat
    repo = tmp / "repo"
    (repo / "nbs").mkdir(parents=True)
    for p in ROOT.iterdir():
        if p.name not in ("nbs", ".git", ".venv"): (repo / p.name).symlink_to(p)
    for p in NBS.iterdir():
        if p.name != NOTEBOOK: (repo / "nbs" / p.name).symlink_to(p)
    nb = nbformat.read(str(NBS / NOTEBOOK), as_version=4)
    for c in nb.cells:
        if c.cell_type == "code": c.outputs, c.execution_count = [], None
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, str(repo / "nbs" / NOTEBOOK))
    return repo


def _settings(tmp: Path) -> dict:
    "Folders and settings of a throw-away JupyterLab: every cell kept in the DOM, no autosave, no news pop-up."
    d = {k: tmp / k for k in ("config", "data", "runtime", "settings", "workspaces", "ipython")}
    for p in d.values(): p.mkdir(parents=True, exist_ok=True)
    (d["settings"] / "@jupyterlab" / "notebook-extension").mkdir(parents=True)
    (d["settings"] / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings").write_text(
        json.dumps({"windowingMode": "none"}))
    (d["settings"] / "@jupyterlab" / "docmanager-extension").mkdir(parents=True)
    (d["settings"] / "@jupyterlab" / "docmanager-extension" / "plugin.jupyterlab-settings").write_text(
        json.dumps({"autosave": False}))
    (d["config"] / "labconfig").mkdir()
    (d["config"] / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}))
    return d


def _api(base: str, token: str, path: str, method: str = "GET"):
    req = Request(base + path, method=method, headers={"Authorization": f"token {token}"})
    with urlopen(req, timeout=10) as r:
        body = r.read()
        return json.loads(body) if body else None


def _start_server(repo: Path, d: dict, port: int, token: str, log) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # Agg would swallow the inline figures
    env.setdefault("OMP_NUM_THREADS", "1"); env.setdefault("MKL_NUM_THREADS", "1")  # the kernel shares 2 cores with the browser
    env.update(JUPYTER_CONFIG_DIR=str(d["config"]), JUPYTER_DATA_DIR=str(d["data"]), JUPYTER_RUNTIME_DIR=str(d["runtime"]),
               IPYTHONDIR=str(d["ipython"]), JUPYTER_PLATFORM_DIRS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={repo}",
           f"--LabApp.user_settings_dir={d['settings']}", f"--LabApp.workspaces_dir={d['workspaces']}",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
           "--LabApp.extension_manager=readonly", "--ServerApp.terminals_enabled=False"]
    if hasattr(os, "geteuid") and os.geteuid() == 0: cmd.append("--allow-root")  # CI runs as root
    return subprocess.Popen(cmd, cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop_server(proc: subprocess.Popen, base: str, token: str):
    "Ask the server to shut down (it stops its kernels), then end what is left of it and its children, by pid."
    import psutil
    try: kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error: kids = []
    try: _api(base, token, "api/shutdown", "POST")
    except Exception: pass
    try: proc.wait(15)
    except subprocess.TimeoutExpired:
        try: os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError: pass
        try: proc.wait(10)
        except subprocess.TimeoutExpired: os.killpg(proc.pid, signal.SIGKILL); proc.wait(10)
    gone, alive = psutil.wait_procs(kids, timeout=10)
    for p in alive:
        try: p.kill()
        except psutil.Error: pass


def _wait(fn, timeout: float, what: str, every: float = 0.5):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = fn()
        if v: return v
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


_PROMPTS_JS = "return [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')].map(e => e.textContent.trim())"
# Top-level widget outputs: an output whose own child is a widget (outputs inside an Output widget are not counted).
_FIND_JS = ("[...document.querySelectorAll('.jp-Notebook .jp-OutputArea-output')]"
            ".filter(o => o.querySelector(':scope > .jupyter-widgets') && !o.parentElement.closest('.jupyter-widgets'))")
_WIDGET_OUTPUTS_JS = f"return {_FIND_JS};"
_EXPLORERS_JS = f"""
return {_FIND_JS}.map((o, i) => {{
  const imgs = [...o.querySelectorAll('img')];
  return {{i, text: o.textContent.slice(0, 200), widgets: o.querySelectorAll('.jupyter-widgets').length,
          sliders: o.querySelectorAll('.widget-slider .noUi-handle').length,
          readouts: [...o.querySelectorAll('.widget-readout')].map(r => r.textContent),
          images: imgs.filter(im => im.complete && im.naturalWidth > 0).map(im => im.src.length + ':' + im.src.slice(-64))}};
}});
"""


def test_explorers_in_jupyterlab(tmp_path, capsys):
    chromium_or_skip()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    repo, d = _workspace(tmp_path), _settings(tmp_path)
    port, token = _free_port(), secrets.token_hex(16)
    base = f"http://127.0.0.1:{port}/"
    log_path = tmp_path / "jupyterlab.log"
    t0, c0 = time.perf_counter(), cpu_children()
    with open(log_path, "w") as log:
        proc = _start_server(repo, d, port, token, log)
        try:
            def up():
                if proc.poll() is not None: raise AssertionError(f"jupyter lab exited:\n{log_path.read_text()[-3000:]}")
                try: return _api(base, token, "api/status") is not None
                except Exception: return False
            _wait(up, 60, "the JupyterLab server")
            with chromium_driver(1400, 1000) as drv:
                drv.get(f"{base}lab/tree/nbs/{NOTEBOOK}?reset&token={token}")
                _wait(lambda: drv.find_elements(By.CSS_SELECTOR, ".jp-NotebookPanel .jp-CodeCell"), 90, "the notebook to open")
                def kernel_idle():
                    s = _api(base, token, "api/sessions")
                    return bool(s) and all(x["kernel"]["execution_state"] == "idle" for x in s)
                _wait(kernel_idle, 60, "the kernel to start")
                n_code = len(drv.execute_script(_PROMPTS_JS))
                # Run > Run All Cells, through the menu as a person would
                drv.find_element(By.XPATH, "//div[contains(@class,'lm-MenuBar-itemLabel') and normalize-space()='Run']").click()
                run_all = "li[data-command='runmenu:run-all'], li[data-command='notebook:run-all-cells']"
                _wait(lambda: drv.find_elements(By.CSS_SELECTOR, run_all), 10, "Run All Cells in the Run menu")
                drv.find_element(By.CSS_SELECTOR, run_all).click()
                t_run, idle_since = time.time(), None
                while True:
                    prompts = drv.execute_script(_PROMPTS_JS)
                    if all(re.fullmatch(r"\[\d+\]:", p) for p in prompts): break
                    idle = "[*]:" not in prompts and kernel_idle()
                    idle_since = (idle_since or time.time()) if idle else None
                    if idle_since and time.time() - idle_since > 5 or time.time() - t_run > RUN_TIMEOUT:
                        errs = [e.text[-1500:] for e in drv.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")]
                        save_screenshot(drv, SHOTS / "jupyterlab_failed.png")
                        raise AssertionError(f"Run All stopped (prompts {prompts}) after {time.time() - t_run:.0f} s; stderr/tracebacks:\n" + "\n---\n".join(errs[-3:]))
                    time.sleep(1)
                run_s = time.time() - t_run
                _wait(lambda: (lambda es: es and all(e["sliders"] and e["images"] for e in es))(drv.execute_script(_EXPLORERS_JS)),
                      30, "the explorers' sliders and figures to render")
                explorers = drv.execute_script(_EXPLORERS_JS)
                assert explorers, f"no widget output after running {NOTEBOOK} ({n_code} code cells)"
                bad = [e for e in explorers if not (e["widgets"] and e["sliders"] and e["images"]) or "Error displaying widget" in e["text"]]
                assert not bad, f"explorers that did not render (need widgets, a slider and a figure): {bad}"
                # move each explorer's first slider one step with the keyboard; its figure must be redrawn
                handles = drv.execute_script(_WIDGET_OUTPUTS_JS)
                moved = []
                for k, out in enumerate(handles):
                    before = drv.execute_script(_EXPLORERS_JS)[k]
                    handle = out.find_elements(By.CSS_SELECTOR, ".widget-slider .noUi-handle")[0]
                    drv.execute_script("arguments[0].scrollIntoView({block: 'center'})", handle)
                    handle.click()
                    handle.send_keys(Keys.ARROW_RIGHT)
                    if drv.execute_script(_EXPLORERS_JS)[k]["readouts"] == before["readouts"]: handle.send_keys(Keys.ARROW_LEFT, Keys.ARROW_LEFT)
                    try:
                        after = _wait(lambda: (lambda e: e if e["images"] and e["images"] != before["images"] else None)(
                            drv.execute_script(_EXPLORERS_JS)[k]), 60, f"explorer {k + 1}'s figure to change", every=0.3)
                    except AssertionError as e:
                        save_screenshot(drv, SHOTS / "jupyterlab_failed.png")
                        raise AssertionError(f"{e}; readouts before {before['readouts']}, now "
                                             f"{drv.execute_script(_EXPLORERS_JS)[k]['readouts']}") from None
                    moved.append((before["readouts"], after["readouts"]))
                shot = save_screenshot(drv, SHOTS / "jupyterlab_explorers.png", max_height=3000)
                errs = [e for e in console_errors(drv) if "favicon" not in e]
        finally:
            _stop_server(proc, base, token)
    assert proc.poll() is not None, "the JupyterLab server is still running"
    say(capsys, f"JupyterLab: {len(explorers)} explorers rendered and redrawn after a slider move "
                f"({moved}); Run All {run_s:.0f} s, whole check {time.perf_counter() - t0:.0f} s (CPU of server, kernel and "
                f"browser {cpu_children() - c0:.0f} s, load average {os.getloadavg()[0]:.1f}); screenshot {shot}")
    if errs: say(capsys, f"JupyterLab console errors (not failing the check): {errs[:5]}")

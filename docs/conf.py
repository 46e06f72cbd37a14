"""Sphinx configuration of the documentation site (Sphinx + myst-nb + sphinx-book-theme).

Do not run sphinx-build on `nbs/` directly: `python tools/build_docs.py` stages the notebooks (nbdev directives
turned into myst-nb tags, the navigation and the API reference generated) and then runs Sphinx with this file.
Nothing here reaches the network: notebooks are rendered with their committed outputs (no execution) and MathJax
is served from the copy that the `django-static-mathjax` package ships (MathJax 3, the version Sphinx loads from a
CDN by default).
"""
import shutil, tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

project = _project["name"]
release = version = _project["version"]
author = ", ".join(a["name"] for a in _project.get("authors", []))
copyright = f"{author}, {_project['license']['text']}"

extensions = ["myst_nb", "sphinx.ext.mathjax"]
root_doc = "index"
exclude_patterns = ["_build", "**.ipynb_checkpoints", "jupyter_execute"]
source_suffix = {".md": "myst-nb", ".ipynb": "myst-nb"}

# The notebooks are rendered as committed; executing them is `tools/execute_notebooks.py`'s job.
nb_execution_mode = "off"
nb_merge_streams = True
nb_output_stderr = "show"
nb_ipywidgets_js = {}  # widget outputs are replaced by a note at staging; never load widget JS from a CDN
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_dmath_double_inline = True
myst_heading_anchors = 3

# MathJax from the local copy (tools/build_docs.py copies it to _static/mathjax after the build).
mathjax_path = "mathjax/tex-mml-chtml.js"
MATHJAX_PARTS = ["tex-mml-chtml.js", "core.js", "loader.js", "startup.js",
                 "input", "output/chtml.js", "output/chtml", "a11y", "sre", "ui", "adaptors"]

html_theme = "sphinx_book_theme"
html_title = project
html_static_path = ["_static"]
html_css_files = ["site.css"]
html_favicon = "_static/favicon.svg"  # without one, browsers ask for /favicon.ico and log a 404
html_context = {"default_mode": "auto"}  # the theme logs an error on a first visit when no mode is set
html_copy_source = True
html_theme_options = {
    "home_page_in_toc": True,
    "show_toc_level": 2,
    "use_download_button": True,
    "use_fullscreen_button": False,
    "navigation_with_keys": False,
    "search_bar_text": "Search the lessons and the API",
}
pygments_style = "default"


def mathjax_source() -> Path:
    "The `es5` folder of the MathJax copy shipped by the `django-static-mathjax` package."
    try:
        import mathjax
    except ImportError as e:
        raise RuntimeError("the docs need the `docs` extra (MathJax served offline): pip install -e '.[docs]'") from e
    es5 = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5"
    if not (es5 / "tex-mml-chtml.js").is_file():
        raise RuntimeError(f"no MathJax build in {es5}: reinstall django-static-mathjax")
    return es5


def _copy_mathjax(app, exception):
    if exception is not None or app.builder.format != "html": return
    src, dst = mathjax_source(), Path(app.outdir) / "_static" / "mathjax"
    shutil.rmtree(dst, ignore_errors=True)
    for part in MATHJAX_PARTS:
        s, d = src / part, dst / part
        d.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(s, d) if s.is_dir() else shutil.copy2(s, d)
    for name in ("LICENSE",):
        if (src.parent / name).is_file(): shutil.copy2(src.parent / name, dst / name)


def setup(app):
    mathjax_source()  # fail before rendering anything when MathJax is missing
    app.connect("build-finished", _copy_mathjax)

"""Build the documentation site from the notebooks with their committed outputs, offline (Sphinx + myst-nb).

    .venv/bin/python tools/build_docs.py                                 # nbs/ -> docs/_site/ (open docs/_site/index.html)
    .venv/bin/python tools/build_docs.py --nbs /tmp/x/nbs -o /tmp/site  # another notebook folder, another output

Nothing is executed and nothing is fetched: `tools/execute_notebooks.py` fills the notebooks' outputs beforehand.
The notebooks are first staged into a work folder (default `docs/_build/src`, git-ignored), the way nbdev stages
them for Quarto: nbdev directives become myst-nb cell tags (`#| hide` cells are dropped, the `#| ...` lines are not
shown), widget outputs (which need a live kernel) become a short note, course assignments become their student
versions (the repository holds the solutions; `--with-solutions` shows them), each repro notebook gets a table of its
papermill parameters, cells that draw a figure are tagged `uad-figure` (tests/test_site.py checks each has one),
the navigation of `docs/nav.toml` is added to the front page (`nbs/index.ipynb`), and the API reference is
generated from the exported functions' signatures and docstrings with nbdev's `show_doc`. Sphinx then renders the
staged folder with `docs/conf.py`; any Sphinx warning fails the build. Needs the `docs` extra.
"""
from __future__ import annotations
import argparse, ast, fnmatch, importlib, inspect, json, os, re, shutil, subprocess, sys, time
try: import tomllib                     # Python 3.11+
except ModuleNotFoundError: import tomli as tomllib   # Python 3.10 (the docs extra installs tomli there)
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NBS = ROOT / "nbs"
DEFAULT_OUT = DOCS / "_site"
DEFAULT_WORK = DOCS / "_build"
FIGURE_TAG = "uad-figure"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
# pyproject's [tool.nbdev] tst_flags: cells carrying one are skipped by nbdev-test (and by execute_notebooks)
SKIP_FLAGS = tuple(tomllib.loads((ROOT / "pyproject.toml").read_text()).get("tool", {}).get("nbdev", {})
                   .get("tst_flags", "slow gpu").split())

_DIRECTIVE = re.compile(r"^#\s?\|\s*([\w-]+):?\s*(.*?)\s*$")


# ---------------------------------------------------------------------------------------------------- notebooks
def _src(cell) -> str:
    s = cell.get("source", "")
    return "".join(s) if isinstance(s, list) else s


def split_directives(source: str) -> tuple[dict, str]:
    "nbdev directives (`#| name args` lines at the top of a code cell) as {name: args}, and the code without them."
    lines, dirs = source.splitlines(keepends=True), {}
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        if not line: i += 1; continue
        m = _DIRECTIVE.match(line)
        if not m: break
        dirs[m.group(1).lower()] = m.group(2)
        i += 1
    return dirs, "".join(lines[i:]).lstrip("\n")


def is_skipped(dirs: dict, flags=SKIP_FLAGS) -> bool:
    "A cell nbdev-test does not run: flagged with a test flag (`#| slow`, `#| gpu`) or `#| eval: false`."
    return any(f in dirs for f in flags) or dirs.get("eval", "").lower() == "false"


_PLT_DRAW = {"subplots", "figure", "imshow", "plot", "show", "hist", "bar", "barh", "scatter", "matshow", "contour",
             "contourf", "subplot", "subplot_mosaic", "pcolormesh", "errorbar", "fill_between", "step", "semilogy"}


def figure_functions() -> set[str]:
    "Names exported by `uad_notebooks` whose return annotation mentions a matplotlib Figure."
    names = set()
    for mod in package_modules():
        m = importlib.import_module(f"uad_notebooks.{mod}")
        for n in getattr(m, "__all__", []):
            f = getattr(m, n, None)
            if not callable(f): continue
            try: ret = inspect.signature(f).return_annotation
            except (TypeError, ValueError): continue
            if "Figure" in (ret if isinstance(ret, str) else repr(ret)): names.add(n)
    return names


def _called_name(func) -> str | None:
    if isinstance(func, ast.Name): return func.id
    if isinstance(func, ast.Attribute): return func.attr
    return None


def draws_figure(code: str, fig_funcs: set[str] = frozenset()) -> bool:
    """Whether a code cell, run top to bottom, leaves a figure to show: it calls pyplot's drawing functions, a `plot_*`
    / `show_*` / `*_figure` function or one of `fig_funcs` outside any function, class or `if`, and closes nothing
    (`plt.close`). A lower bound: cells that draw in other ways are not counted."""
    code = "\n".join(l for l in code.splitlines() if not l.lstrip().startswith(("%", "!")))
    try: tree = ast.parse(code)
    except SyntaxError: return False
    found = closes = False
    def visit(node):
        nonlocal found, closes
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.If, ast.IfExp)): return
        if isinstance(node, ast.Call):
            name, f = _called_name(node.func), node.func
            on_plt = isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "plt"
            if on_plt and name == "close": closes = True
            elif on_plt and name in _PLT_DRAW: found = True
            elif name and (name.startswith(("plot_", "show_")) or name.endswith("_figure") or name in fig_funcs): found = True
        for child in ast.iter_child_nodes(node): visit(child)
    visit(tree)
    return found and not closes


_TQDM = re.compile(r"^\s*[^|\n]*\d+%\|")


def _widget_note(text: str) -> bool:
    "Widget outputs worth a note in the page: not a tqdm progress bar."
    return not _TQDM.match(text)


def _clean_outputs(outputs: list) -> list:
    "Widget views need a live kernel: progress bars are dropped, other widgets replaced by a note."
    out = []
    for o in outputs:
        data = o.get("data", {})
        if WIDGET_MIME not in data: out.append(o); continue
        text = _src({"source": data.get("text/plain", "")})
        if _widget_note(text):
            out.append(dict(output_type="display_data", metadata={}, data={
                "text/markdown": "*An interactive widget: open this notebook in Jupyter and run it to use it.*"}))
    return out


def repro_parameter_table(nb_path: Path) -> str | None:
    "A markdown table of a repro notebook's papermill parameters (name, type, default, help)."
    import papermill as pm
    params = pm.inspect_notebook(str(nb_path))
    if not params: return None
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    rows = [f"| `{esc(p['name'])}` | `{esc(p['inferred_type_name'])}` | `{esc(p['default'])}` | {esc(p['help'])} |"
            for p in params.values()]
    return ("**Parameters.** Override any of them with `papermill ... -p NAME VALUE` "
            "(`papermill --help-notebook` lists them too):\n\n| name | type | default | help |\n|---|---|---|---|\n"
            + "\n".join(rows))


STUDENT_NOTE = ("*This page shows the **student version** of the assignment (solution regions replaced by stubs, "
                "hidden tests removed), as `uad-course generate` writes it. The solutions are the notebooks of the "
                "repository's `nbs/course/` folder; see the [course page](README.md) for teachers.*")


def student_page(nb: dict, name: str) -> dict:
    """The student version of a course assignment (`uad_notebooks.course.student_version`), keeping the outputs of
    the cells it leaves unchanged, with a note after the title; a notebook that is not an assignment is returned as is."""
    from uad_notebooks.course import CourseError, student_version
    try: stu = student_version(nb, name)
    except CourseError: return nb
    for orig, new in zip(nb["cells"], stu["cells"]):
        if new.get("cell_type") == "code" and _src(new) == _src(orig): new["outputs"] = orig.get("outputs", [])
    first_md = next((i for i, c in enumerate(stu["cells"]) if c["cell_type"] == "markdown"), -1)
    stu["cells"].insert(first_md + 1, dict(cell_type="markdown", metadata={}, source=STUDENT_NOTE, id="student-note"))
    return stu


def stage_notebook(src: Path, dst: Path, fig_funcs: set[str], student: bool = False) -> dict:
    """Write the staged copy of notebook `src` to `dst` (the student version of an assignment when `student`);
    returns {'figure_cells': n, 'cells': n}."""
    nb = json.loads(src.read_text())
    if student: nb = student_page(nb, src.name)
    cells, n_fig = [], 0
    for cell in nb["cells"]:
        cell = dict(cell, metadata=dict(cell.get("metadata", {})))
        if cell["cell_type"] != "code": cells.append(cell); continue
        dirs, code = split_directives(_src(cell))
        if "hide" in dirs or dirs.get("include", "").lower() == "false": continue
        if "default_exp" in dirs and not code.strip(): continue
        tags = list(cell["metadata"].get("tags", []))
        if dirs.get("echo", "").lower() == "false": tags.append("remove-input")
        if dirs.get("output", "").lower() == "false": tags.append("remove-output")
        if not is_skipped(dirs) and draws_figure(code, fig_funcs): tags.append(FIGURE_TAG); n_fig += 1
        if "parameters" in tags and src.name.startswith("repro_"):
            table = repro_parameter_table(src)
            if table: cells.append(dict(cell_type="markdown", metadata={}, source=table, id=f"{cell.get('id', 'p')}-params"))
        cell["source"] = code
        cell["outputs"] = _clean_outputs(cell.get("outputs", []))
        if tags: cell["metadata"]["tags"] = tags
        cells.append(cell)
    nb["cells"] = cells
    nb["metadata"] = {k: v for k, v in nb.get("metadata", {}).items() if k != "widgets"}
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text(json.dumps(nb, indent=1))
    return dict(figure_cells=n_fig, cells=len(cells))


# ---------------------------------------------------------------------------------------------------- navigation
def source_pages(nbs: Path) -> list[str]:
    "Pages of the site, relative to `nbs` with their suffix: every notebook (no checkpoints, no `_*`) and course/README.md."
    pages = [p for p in nbs.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts and not p.name.startswith(("_", "."))]
    pages += [p for p in (nbs / "course").glob("*.md")] if (nbs / "course").is_dir() else []
    return sorted(p.relative_to(nbs).as_posix() for p in pages)


def nav_sections(pages: list[str], nav_file: Path = DOCS / "nav.toml") -> list[tuple[str, list[str]]]:
    "[(caption, [page, ...])] in learning-path order; a page outside every section (other than index) is an error."
    spec = tomllib.loads(nav_file.read_text())["section"]
    placed, out = {"index.ipynb"}, []
    for sec in spec:
        items = []
        for pat in sec["pages"]:
            if pat == "api": items.append("api"); continue
            for p in sorted(fnmatch.filter(pages, pat)):
                if p not in placed and p.count("/") == pat.count("/"):  # `*` must not cross folders
                    placed.add(p); items.append(p)
        if items: out.append((sec["caption"], items))
    missing = [p for p in pages if p not in placed]
    if missing:
        raise SystemExit(f"{nav_file}: these pages match no section, add a pattern for them: {', '.join(missing)}")
    if "index.ipynb" not in pages: raise SystemExit("the notebook folder has no index.ipynb (the front page)")
    return out


def _docname(page: str) -> str:
    return "api/index" if page == "api" else page.rsplit(".", 1)[0]


def toctree_markdown(sections) -> str:
    "Hidden toctrees (one per section, with its caption) that give the site its navigation."
    blocks = []
    for caption, items in sections:
        body = "\n".join(_docname(p) for p in items)
        blocks.append(f"```{{toctree}}\n:hidden:\n:caption: {caption}\n:maxdepth: 1\n\n{body}\n```")
    return "\n\n".join(blocks)


# ---------------------------------------------------------------------------------------------------- API reference
def package_modules() -> list[str]:
    "Exported modules of uad_notebooks (files next to __init__.py, private ones excluded)."
    return sorted(p.stem for p in (ROOT / "uad_notebooks").glob("*.py") if not p.stem.startswith("_"))


def module_notebooks(nbs: Path) -> dict[str, str]:
    "{module: notebook page} from each notebook's `#| default_exp` cell."
    out = {}
    for page in source_pages(nbs):
        if not page.endswith(".ipynb"): continue
        for c in json.loads((nbs / page).read_text())["cells"]:
            if c["cell_type"] != "code": continue
            d, _ = split_directives(_src(c))
            if "default_exp" in d: out[d["default_exp"].split()[0]] = page; break
    return out


def _title(nb_path: Path) -> str:
    for c in json.loads(nb_path.read_text())["cells"]:
        if c["cell_type"] == "markdown":
            line = _src(c).strip().splitlines()[0] if _src(c).strip() else ""
            if line.startswith("# "): return line[2:].strip()
    return nb_path.stem


def _show_doc_md(obj, level: int) -> str:
    from nbdev.showdoc import show_doc
    md = show_doc(obj, title_level=level)._repr_markdown_()
    md = re.sub(r"^\s*---\s*\n", "", md).strip()
    md = re.sub(r"<class '([\w.]+)'>", r"\1", md)  # a class default shows as its name, which is valid Python
    def fence(m):  # a signature that is still not Python (a repr like <function f at 0x..>) is shown as text
        try: ast.parse(m.group(1) + "    pass\n"); return m.group(0)
        except SyntaxError: return "```text\n" + m.group(1) + "```"
    return re.sub(r"```python\n(.*?)```", fence, md, flags=re.S)


def _public_methods(cls) -> list:
    "Public methods defined in the class body or patched onto it (fastcore's @patch), in definition order."
    out = []
    for name, v in vars(cls).items():
        if name.startswith("_"): continue
        f = v.__func__ if isinstance(v, (staticmethod, classmethod)) else v
        if inspect.isfunction(f): out.append(getattr(cls, name))
        elif isinstance(v, property) and v.fget is not None and v.fget.__doc__: out.append(v)
    return out


def api_module_markdown(mod: str, notebook: str | None, nbs: Path) -> str:
    m = importlib.import_module(f"uad_notebooks.{mod}")
    names = list(getattr(m, "__all__", []))
    head = [f"# `uad_notebooks.{mod}`", ""]
    if notebook:
        head.append(f"Exported from the notebook [{_title(nbs / notebook)}](../{notebook}), where each function is built, "
                    "explained and tested. Signatures and docstrings below come from the code (nbdev's `show_doc`).")
    parts = ["\n".join(head)]
    for n in names:
        obj = getattr(m, n)
        if inspect.isclass(obj):
            parts.append(_show_doc_md(obj, 2))
            for meth in _public_methods(obj):
                if isinstance(meth, property):
                    parts.append(f"### {obj.__name__}.{meth.fget.__name__}\n\n*property* — *{meth.fget.__doc__.strip()}*")
                else: parts.append(_show_doc_md(meth, 3))
        elif callable(obj):
            parts.append(_show_doc_md(obj, 2))
        else:
            r = repr(obj)
            r = r if len(r) <= 400 else r[:400] + " ..."
            parts.append(f"## {n}\n\n*{type(obj).__name__}*\n\n```python\n{n} = {r}\n```")
    return "\n\n".join(parts) + "\n"


def write_api_pages(stage: Path, nbs: Path) -> list[str]:
    "api/index.md and api/<module>.md for every module; returns the module names in learning-path order."
    nb_of = module_notebooks(nbs)
    order = {p: i for i, p in enumerate(sorted(nb_of.values()))}
    mods = sorted(package_modules(), key=lambda m: (order.get(nb_of.get(m), 10 ** 6), m))
    api = stage / "api"
    api.mkdir(parents=True, exist_ok=True)
    rows = []
    for mod in mods:
        (api / f"{mod}.md").write_text(api_module_markdown(mod, nb_of.get(mod), nbs))
        names = getattr(importlib.import_module(f"uad_notebooks.{mod}"), "__all__", [])
        src = f"[{_title(nbs / nb_of[mod])}](../{nb_of[mod]})" if mod in nb_of else "—"
        rows.append(f"| [`{mod}`]({mod}.md) | {src} | {len(names)} |")
    index = ["# API reference", "",
             "The library the lessons export: one module per notebook. Each page lists the module's exported names "
             "(`__all__`) with their signatures, the comment on each argument, and the docstring, all read from the code.",
             "", "| module | notebook | names |", "|---|---|---|", *rows, "",
             "```{toctree}", ":hidden:", ":maxdepth: 1", "", *mods, "```", ""]
    (api / "index.md").write_text("\n".join(index))
    return mods


# ---------------------------------------------------------------------------------------------------- build
def stage(nbs: Path, work: Path, solutions: bool = False) -> dict:
    """Stage the site's sources from `nbs` into `work/src`; returns a summary. Course assignments are shown as their
    student versions unless `solutions` (the repository holds the solutions; a public site should not)."""
    nbs = Path(nbs).resolve()
    if not (nbs / "index.ipynb").is_file(): raise SystemExit(f"--nbs {nbs}: no index.ipynb there (not a notebook folder?)")
    src, marker = work / "src", work / ".uad_docs_work"
    if src.exists() and not marker.exists():
        raise SystemExit(f"--work {work}: has a src/ that this tool did not write; pick another staging folder")
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    marker.write_text("staging folder of tools/build_docs.py\n")
    pages = source_pages(nbs)
    sections = nav_sections(pages)
    fig_funcs = figure_functions()
    summary = {}
    for page in pages:
        if page.endswith(".ipynb"):
            student = not solutions and page.startswith("course/")
            summary[page] = stage_notebook(nbs / page, src / page, fig_funcs, student)
        else: (src / page).parent.mkdir(parents=True, exist_ok=True); shutil.copy2(nbs / page, src / page)
    idx = json.loads((src / "index.ipynb").read_text())
    idx["cells"].append(dict(cell_type="markdown", metadata={}, source=toctree_markdown(sections), id="site-nav"))
    (src / "index.ipynb").write_text(json.dumps(idx, indent=1))
    write_api_pages(src, nbs)
    (work / "staged.json").write_text(json.dumps(dict(nbs=str(nbs), pages=summary, sections=sections), indent=1))
    return dict(pages=summary, sections=sections)


def build(nbs: Path = NBS, out: Path = DEFAULT_OUT, work: Path | None = None, jobs: str = "1", quiet: bool = True,
          solutions: bool = False) -> Path:
    "Stage `nbs` and render the site into `out` (a fresh build; any Sphinx warning is an error). Returns `out`."
    out, work = Path(out).resolve(), Path(work or (DEFAULT_WORK if Path(out).resolve() == DEFAULT_OUT else
                                                    Path(out).resolve().parent / (Path(out).name + "_build"))).resolve()
    if out == ROOT or out == DOCS or out == NBS: raise SystemExit(f"--out {out}: refusing to build into a source folder")
    if out.exists() and any(out.iterdir()) and not (out / ".buildinfo").exists():
        raise SystemExit(f"--out {out}: exists and is not a site built by Sphinx; remove it or pick another folder")
    sys.path.insert(0, str(ROOT))
    stage(nbs, work, solutions)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-E", "-W", "--keep-going", "-j", str(jobs),
           "-c", str(DOCS), "-d", str(work / "doctrees"), str(work / "src"), str(out)] + (["-q"] if quiet else [])
    env = dict(os.environ, PYTHONWARNINGS="ignore", MPLBACKEND="Agg")
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise BuildError(f"sphinx-build failed (exit {r.returncode}); warnings are errors:\n{r.stderr[-8000:]}\n{r.stdout[-2000:]}")
    (out / ".nojekyll").write_text("")
    return out


class BuildError(RuntimeError): pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nbs", default=str(NBS), help="notebook folder to render (default nbs/)")
    ap.add_argument("-o", "--out", default=str(DEFAULT_OUT), help="output folder, replaced (default docs/_site)")
    ap.add_argument("--work", default=None, help="staging folder (default docs/_build, or <out>_build beside --out)")
    ap.add_argument("--with-solutions", action="store_true", help="render the course assignments with their solutions "
                    "(default: the student versions, so that a public site does not give the answers away)")
    ap.add_argument("-j", "--jobs", default="1", help="Sphinx parallel jobs (default 1; 'auto' for all cores)")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    try: out = build(Path(a.nbs), Path(a.out), Path(a.work) if a.work else None, a.jobs, solutions=a.with_solutions)
    except BuildError as e: print(e, file=sys.stderr); return 1
    print(f"built {out} in {time.perf_counter() - t0:.0f} s; open {out / 'index.html'} "
          f"or serve it: python -m http.server -d {out} 8000")
    return 0


if __name__ == "__main__":
    sys.exit(main())

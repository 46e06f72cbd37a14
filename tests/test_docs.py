"""The docs: every notebook renders to HTML (nbconvert, no execution) and every relative link in markdown resolves.

`nbdev-docs` needs Quarto, which CI does not install; these checks catch what breaks a rendered site without it.
"""
import json, re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from conftest import NBS, ROOT

DOC_NOTEBOOKS = sorted(p for p in NBS.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_MD_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+[\"'][^)]*[\"'])?\s*\)")
_REF_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
_HTML_LINK = re.compile(r"""<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*["']([^"']+)["']""", re.I)


def markdown_links(text: str) -> list[str]:
    "Link targets in markdown text (inline, reference-style, <a href>, <img src>), ignoring code blocks and code spans."
    text = _INLINE_CODE.sub("", _FENCE.sub("", text))
    return [m for rx in (_MD_LINK, _REF_LINK, _HTML_LINK) for m in rx.findall(text)]


def _is_external(target: str) -> bool:
    return bool(urlsplit(target).scheme) or target.startswith(("//", "#"))


def _resolves(path: Path) -> bool:
    "A file or folder exists; `foo.html` counts when the notebook or page it is rendered from exists."
    if path.exists(): return True
    if path.suffix == ".html":
        return any(path.with_suffix(s).exists() for s in (".ipynb", ".md", ".qmd"))
    return False


def broken_links(nb_path: Path) -> list[str]:
    "Relative links in the markdown cells of `nb_path` that point to no existing file (anchors are not checked)."
    cells = json.loads(Path(nb_path).read_text())["cells"]
    bad = []
    for i, c in enumerate(cells):
        if c["cell_type"] != "markdown": continue
        src = "".join(c["source"]) if isinstance(c["source"], list) else c["source"]
        for target in markdown_links(src):
            if _is_external(target): continue
            rel = unquote(urlsplit(target).path)
            if not rel: continue
            if not _resolves((Path(nb_path).parent / rel).resolve()):
                bad.append(f"cell {i}: {target}")
    return bad


def _nb(tmp_path, md: str) -> Path:
    nb = dict(cells=[dict(cell_type="markdown", metadata={}, source=md, id="c000")], metadata={}, nbformat=4, nbformat_minor=5)
    p = tmp_path / "nb.ipynb"
    p.write_text(json.dumps(nb))
    return p


def test_link_checker_catches_a_broken_link(tmp_path):
    (tmp_path / "other.ipynb").write_text("{}")
    (tmp_path / "notes.md").write_text("x")
    ok = ("[a](other.ipynb) [b](other.html#sec) [c](notes.md) [d](#local) [e](https://example.org/x.ipynb) "
          "<a href='other.ipynb'>f</a> `[not a link](missing.ipynb)`\n```\n[nor this](gone.md)\n```")
    assert broken_links(_nb(tmp_path, ok)) == []
    bad = broken_links(_nb(tmp_path, ok + "\n[g](missing.ipynb) [h](../nowhere/README.md) ![i](fig.png) [j](gone.html)"))
    assert bad == ["cell 0: missing.ipynb", "cell 0: ../nowhere/README.md", "cell 0: fig.png", "cell 0: gone.html"]


def test_markdown_links_forms():
    text = '[a](x.ipynb "title") ![b](img/y.png)\n[ref]: z.md\n<img src="w.png"> `[c](no.md)`'
    assert markdown_links(text) == ["x.ipynb", "img/y.png", "z.md", "w.png"]


@pytest.mark.parametrize("nb", DOC_NOTEBOOKS, ids=lambda p: str(p.relative_to(NBS)))
def test_links_resolve(nb):
    bad = broken_links(nb)
    assert not bad, f"{nb.relative_to(ROOT)} has broken relative links:\n" + "\n".join(bad)


@pytest.fixture(scope="module")
def html_exporter():
    from nbconvert import HTMLExporter
    return HTMLExporter()


@pytest.mark.parametrize("nb", DOC_NOTEBOOKS, ids=lambda p: str(p.relative_to(NBS)))
def test_notebook_renders_to_html(nb, html_exporter):
    import nbformat
    node = nbformat.read(str(nb), as_version=4)
    body, _ = html_exporter.from_notebook_node(node)
    assert "<html" in body.lower() and len(body) > 1000
    title = next(("".join(c.source).splitlines()[0] for c in node.cells if c.cell_type == "markdown"), "")
    assert title.startswith("# "), f"{nb.name}: the first markdown cell must start with a '# Title' line"


# ---------------------------------------------------------------- tools/execute_notebooks.py (commits lesson outputs)
def _tiny_nb(path: Path, *sources: str) -> Path:
    import nbformat
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "python3", "language": "python"}})
    nb.cells = [nbformat.v4.new_markdown_cell("# Tiny")] + [nbformat.v4.new_code_cell(s) for s in sources]
    for i, c in enumerate(nb.cells): c.id = f"c{i:03d}"
    nbformat.write(nb, str(path))
    return path


def test_execute_notebooks_runs_like_nbdev_test_and_stays_clean(tmp_path):
    """Outputs and figures are written (even with MPLBACKEND=Agg inherited), `#| slow` / `#| eval: false` cells are
    skipped and left bare, the result is exactly what nbdev-clean leaves, and repro notebooks are refused."""
    import sys
    sys.path.insert(0, str(ROOT / "tools"))
    from execute_notebooks import clean, execute
    nb = _tiny_nb(tmp_path / "t.ipynb", "import matplotlib.pyplot as plt\nx = 6 * 7\nprint(x)\nplt.plot([0, 1]); plt.show()",
                  "#| slow\nraise RuntimeError('slow cells must not run')", "#| eval: false\nraise RuntimeError('nor these')",
                  "x + 1")
    s = execute(nb, timeout=300)
    assert s["skipped"] == 2 and s["images"] == 1, s
    cells = json.loads(nb.read_text())["cells"]
    out1 = cells[1]["outputs"]
    assert any(o.get("text") and "42" in "".join(o["text"]) for o in out1)
    assert any("image/png" in o.get("data", {}) for o in out1), "the figure was not displayed"
    assert cells[2]["outputs"] == [] and cells[3]["outputs"] == []
    assert "43" in "".join(cells[4]["outputs"][0]["data"]["text/plain"])
    assert all(c.get("execution_count") is None for c in cells if c["cell_type"] == "code")
    before = nb.read_bytes()
    clean(nb)
    assert nb.read_bytes() == before, "nbdev-clean would change the executed notebook"
    with pytest.raises(ValueError, match="repro"): execute(_tiny_nb(tmp_path / "repro_x.ipynb", "1"))


def test_execute_notebooks_timeout_leaves_the_notebook_unchanged(tmp_path):
    import sys
    sys.path.insert(0, str(ROOT / "tools"))
    from execute_notebooks import execute
    nb = _tiny_nb(tmp_path / "t.ipynb", "import time\ntime.sleep(60)")
    before = nb.read_bytes()
    with pytest.raises(Exception, match="(?i)timeout|time budget|timed out"): execute(nb, timeout=4)
    assert nb.read_bytes() == before

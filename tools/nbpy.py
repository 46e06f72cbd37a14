"""Convert between notebooks and percent-format Python drafts (a contributor's tool, not part of the package).

    python tools/nbpy.py to-nb  draft.py nbs/11_mae.ipynb   # write a notebook from a draft
    python tools/nbpy.py to-py  nbs/11_mae.ipynb draft.py   # write a draft from a notebook

Draft format: cells start with `# %%` (code) or `# %% [markdown]` (markdown, each line prefixed by `# `);
`# %% tags=["parameters"]` adds cell tags. The notebook in `nbs/` stays the source of truth: drafts are scratch.
"""
import json, re, sys
from pathlib import Path

_HDR = re.compile(r'^# %%(?P<md> \[markdown\])?(?:\s+tags=(?P<tags>\[.*\]))?\s*$')

def py_to_cells(text):
    cells, cur = [], None
    for line in text.splitlines():
        m = _HDR.match(line)
        if m:
            cur = dict(md=bool(m['md']), tags=json.loads(m['tags']) if m['tags'] else [], lines=[])
            cells.append(cur); continue
        if cur is None: cur = dict(md=False, tags=[], lines=[]); cells.append(cur)
        cur['lines'].append(line)
    out = []
    for c in cells:
        lines = c['lines']
        while lines and not lines[-1].strip(): lines.pop()
        while lines and not lines[0].strip(): lines.pop(0)
        if not lines: continue
        if c['md']: lines = [l[2:] if l.startswith('# ') else l[1:] if l.startswith('#') else l for l in lines]
        src = '\n'.join(lines)
        meta = {'tags': c['tags']} if c['tags'] else {}
        if c['md']: out.append(dict(cell_type='markdown', metadata=meta, source=src))
        else: out.append(dict(cell_type='code', execution_count=None, metadata=meta, outputs=[], source=src))
    return out

def to_nb(src, dst):
    nb = dict(cells=py_to_cells(Path(src).read_text()), nbformat=4, nbformat_minor=5,
              metadata=dict(kernelspec=dict(display_name='python3', language='python', name='python3')))
    for i, c in enumerate(nb['cells']): c['id'] = f'c{i:03d}'
    Path(dst).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')

def to_py(src, dst):
    nb = json.loads(Path(src).read_text())
    parts = []
    for c in nb['cells']:
        s = ''.join(c['source']) if isinstance(c['source'], list) else c['source']
        tags = c.get('metadata', {}).get('tags', [])
        t = f' tags={json.dumps(tags)}' if tags else ''
        if c['cell_type'] == 'markdown':
            parts.append(f'# %% [markdown]{t}\n' + '\n'.join(('# ' + l) if l else '#' for l in s.splitlines()))
        else: parts.append(f'# %%{t}\n{s}')
    Path(dst).write_text('\n\n'.join(parts) + '\n')

if __name__ == '__main__':
    cmd, a, b = sys.argv[1:4]
    {'to-nb': to_nb, 'to-py': to_py}[cmd](a, b)

"""Course assignments: solutions earn full marks, student versions none, every exercise its points while the others are
unfinished, correct answers written differently full marks, and each planted typical mistake (a call into the package
among them) loses exactly the points of the checks that should catch it, with a message that names it; no cell but the
solutions imports the package's versions (the checks hold their reference numbers); the installed package holds no
notebook. Grading runs in-process here (a fresh namespace per notebook); one test goes through the
`uad-course` command in a subprocess, one builds a wheel."""
import json, re, shutil, subprocess, sys, zipfile
from pathlib import Path

import pytest

from conftest import NBS, ROOT
from uad_notebooks.course import (CourseError, assignments, cell_source, clear_solutions, generate, grade, is_autograded_test,
                                  is_solution, nbgrader_meta, read_notebook, student_version)

COURSE = NBS / "course"
ASSIGNMENTS = assignments(COURSE)
CLI = Path(sys.executable).parent / "uad-course"


def test_five_assignments_with_points():
    names = [p.name for p in ASSIGNMENTS]
    assert len(names) >= 5, names
    for p in ASSIGNMENTS:
        nb = read_notebook(p)
        pts = [nbgrader_meta(c)["points"] for c in nb["cells"] if nbgrader_meta(c).get("grade")]
        assert sum(pts) >= 5, f"{p.name}: only {sum(pts)} points"
        sols = [c for c in nb["cells"] if nbgrader_meta(c).get("solution") and c["cell_type"] == "code"]
        assert sols and all("### BEGIN SOLUTION" in cell_source(c) for c in sols), f"{p.name}: solution cells need markers"


@pytest.mark.parametrize("nb", ASSIGNMENTS, ids=lambda p: p.name)
def test_solution_earns_full_marks(nb):
    rep = grade(nb, source=nb, isolate=False)
    assert rep.max_total > 0 and rep.total == rep.max_total, str(rep)
    assert not rep.warnings, rep.warnings


@pytest.mark.parametrize("nb", ASSIGNMENTS, ids=lambda p: p.name)
def test_student_version_scores_zero(nb, tmp_path):
    out = generate(nb, tmp_path)[0]
    text = out.read_text()
    assert "BEGIN SOLUTION" not in text and "BEGIN HIDDEN TESTS" not in text
    stu = read_notebook(out)
    for c, s in zip(read_notebook(nb)["cells"], stu["cells"]):  # no line of a solution region survives in its cell
        if "### BEGIN SOLUTION" in cell_source(c):
            body = cell_source(c).split("### BEGIN SOLUTION")[1].split("### END SOLUTION")[0]
            assert "raise NotImplementedError()" in cell_source(s)
            for line in body.strip().splitlines():
                assert line.strip() not in cell_source(s), f"solution line leaked: {line!r}"
    assert not any(c.get("outputs") for c in stu["cells"] if c["cell_type"] == "code")
    rep = grade(out, source=nb, isolate=False)   # runs without crashing the grader
    assert rep.total == 0 and rep.max_total > 0, str(rep)
    assert all(c.error for c in rep.checks)
    assert rep.manual, "each assignment has a written question"


def exercises(nb: dict) -> list:
    "(grade_id of a code solution cell, grade_ids of the checks after it up to the next code solution cell), in order."
    out = []
    for c in nb["cells"]:
        if c["cell_type"] == "code" and is_solution(c): out.append((nbgrader_meta(c)["grade_id"], []))
        elif is_autograded_test(c) and out: out[-1][1].append(nbgrader_meta(c)["grade_id"])
    return out


@pytest.mark.parametrize("nb", ASSIGNMENTS, ids=lambda p: p.name)
def test_each_exercise_scores_alone(nb, tmp_path):
    "An exercise earns all its points while every other exercise is unfinished: no check depends on another exercise."
    src = read_notebook(nb)
    for sol_id, checks in exercises(src):
        alone = json.loads(json.dumps(src))
        for c in alone["cells"]:
            if c["cell_type"] == "code" and is_solution(c) and nbgrader_meta(c)["grade_id"] != sol_id:
                c["source"] = clear_solutions(cell_source(c))[0]
        (tmp_path / nb.name).write_text(json.dumps(alone))
        rep = grade(tmp_path / nb.name, source=nb, isolate=False)
        mine = {c.grade_id: c for c in rep.checks if c.grade_id in checks}
        assert checks and all(c.points == c.max_points for c in mine.values()), f"{sol_id} alone:\n{rep}"
        assert rep.total == sum(c.max_points for c in mine.values()), f"{sol_id} alone: other checks passed too\n{rep}"


def test_installed_package_holds_no_solutions(tmp_path):
    "The wheel that `pip install` installs holds the package only: no notebook, no line of a solution or a hidden test."
    src = tmp_path / "src"
    shutil.copytree(ROOT / "uad_notebooks", src / "uad_notebooks", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(NBS / "course", src / "nbs" / "course")   # where the solutions are, should packaging ever reach for them
    for name in ("pyproject.toml", "README.md", "setup.py", "setup.cfg", "MANIFEST.in"):
        if (ROOT / name).exists(): shutil.copy(ROOT / name, src / name)
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path / "wheel")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    (whl,) = (tmp_path / "wheel").glob("uad_notebooks-*.whl")
    z = zipfile.ZipFile(whl)
    names = z.namelist()
    assert "uad_notebooks/course.py" in names, names
    stray = [n for n in names if n.endswith(".ipynb") or not (n.startswith("uad_notebooks/") or ".dist-info/" in n)]
    assert not stray, f"the installed package would hold {stray}"
    hidden, solution = set(), set()   # lines only the teacher's notebooks hold (solutions may match package code)
    for nb in ASSIGNMENTS:
        for c in read_notebook(nb)["cells"]:
            for begin, end, lines in (("### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS", hidden),
                                      ("### BEGIN SOLUTION", "### END SOLUTION", solution)):
                for part in cell_source(c).split(begin)[1:]:
                    lines |= {l.strip() for l in part.split(end)[0].splitlines() if len(l.strip()) > 30}
    for n in names:
        text = z.read(n).decode("utf-8", "replace")
        leaked = [l for l in hidden | (set() if n.endswith(".py") else solution) if l in text]
        assert not leaked, f"{n} in the installed package holds lines of the course's hidden tests or solutions: {leaked[:3]}"


# (assignment, solution cell grade_id, substitutions in that cell, checks that must fail, phrase the message must hold).
# A substitution (SOLUTION, text) replaces the whole solution region by `text` (written at the region's indent).
SOLUTION = None
MISTAKES = [
    ("01_mae_masking", "patchify", [(".permute(0, 2, 4, 3, 5, 1)", "")], {"patchify_order"}, "without a permute"),
    ("01_mae_masking", "patchify", [(SOLUTION, "return ref.patchify(x, patch_size)")],          # the set-up used to import ref
     {"patchify_shape", "patchify_order"}, "name 'ref' is not defined"),
    ("01_mae_masking", "patchify", [("def patchify", "from uad_notebooks import masking as ref\n\ndef patchify"),
                                    (SOLUTION, "return ref.patchify(x, patch_size)")],
     {"patchify_shape", "patchify_order"}, "write the exercise yourself"),
    ("01_mae_masking", "random_masking", [("int(L * (1 - mask_ratio))", "int(L * mask_ratio)")], {"mask_ratio"},
     "mask ratio wrong"),
    ("01_mae_masking", "random_masking", [("ids_restore = torch.argsort(ids_shuffle, dim=1)", "ids_restore = ids_shuffle")],
     {"mask_order"}, "original token order"),
    ("01_mae_masking", "random_masking", [("torch.rand(B, L, generator=generator)", "torch.rand(B, L)")], {"mask_random"},
     "generator"),
    ("01_mae_masking", "random_masking",
     [(SOLUTION, "from uad_notebooks.masking import random_masking as reference\nreturn reference(x, mask_ratio, generator)")],
     {"mask_ratio", "mask_order", "mask_random"}, "an import of uad_notebooks.masking"),
    ("01_mae_masking", "restore_order", [("return torch.gather(x_, 1, ids_restore[..., None].expand(-1, -1, D))", "return x_")],
     {"restore"}, "token order not restored"),
    ("02_memory_attention", "memory_attention", [("torch.cat([k, mem_k], dim=2)", "torch.cat([k, mem_v], dim=2)")],
     {"attn_memory_keys", "attn_package"}, "memory not appended to the keys"),
    ("02_memory_attention", "memory_attention", [("torch.cat([v, mem_v], dim=2)", "torch.cat([v, mem_k], dim=2)")],
     {"attn_memory_values", "attn_package"}, "memory not appended to the values"),
    ("02_memory_attention", "memory_attention", [("v = torch.cat([v, mem_v], dim=2)", "pass")],
     {"attn_shapes", "attn_memory_keys", "attn_memory_values", "attn_package"}, "keys AND to the values"),
    ("02_memory_attention", "memory_mass", [("w[..., -n_mem:]", "w[..., :n_mem]")], {"mass_value", "mass_package"},
     "LAST n_mem columns"),
    ("02_memory_attention", "memory_mass", [(SOLUTION, "return ref.memory_mass(w, n_mem)")],   # the set-up used to import ref
     {"mass_value", "mass_package"}, "name 'ref' is not defined"),
    ("02_memory_attention", "memory_mass", [("def memory_mass", "from uad_notebooks import memory as ref\n\ndef memory_mass"),
                                            (SOLUTION, "return ref.memory_mass(w, n_mem)")],
     {"mass_value", "mass_package"}, "write the exercise yourself"),
    ("03_perceptual_loss", "relative_l1", [("f_real.detach().abs()", "f_real.abs()")], {"rel_no_grad_denominator"},
     "gradient flows through the perceptual denominator"),
    ("03_perceptual_loss", "relative_l1", [("denom = f_real.detach()", "denom = f_fake.detach()")],
     {"rel_formula", "rel_no_grad_denominator"}, "REAL image"),
    ("03_perceptual_loss", "relative_l1", [(SOLUTION, "return ref.relative_l1(f_real, f_fake, reduction='none', eps=eps)")],
     {"rel_formula", "rel_scale", "rel_no_grad_denominator"}, "name 'ref' is not defined"),   # the set-up used to import ref
    ("03_perceptual_loss", "relative_l1", [("def relative_l1", "from uad_notebooks import perceptual as ref\n\ndef relative_l1"),
                                           (SOLUTION, "return ref.relative_l1(f_real, f_fake, reduction='none', eps=eps)")],
     {"rel_formula", "rel_scale", "rel_no_grad_denominator"}, "write the exercise yourself"),
    ("03_perceptual_loss", "perceptual_map",
     [(".mean(dim=(1, 2, 3)).clamp_min(1e-8).view(-1, 1, 1, 1)", ".mean(dim=1, keepdim=True).clamp_min(1e-8)")],
     {"map_package"}, "ONE number per image"),
    ("03_perceptual_loss", "perceptual_map", [('mode="bilinear", align_corners=False', 'mode="nearest"')], {"map_package"},
     "mode='bilinear'"),
    ("03_perceptual_loss", "perceptual_map",
     [(SOLUTION, "from uad_notebooks.perceptual import relative_l1 as reference\n"
                 "return F.interpolate(reference(f_real, f_fake, reduction='pixel'), size=size, mode='bilinear', align_corners=False)")],
     {"map_package", "map_lesion"}, "an import of uad_notebooks.perceptual"),
    ("04_frequency_mask", "centred_square", [("c_r, c_c = H // 2, W // 2", "c_r, c_c = (H - 1) // 2, (W - 1) // 2")],
     {"square_centred", "square_symmetric"}, "not centred"),
    ("04_frequency_mask", "centred_square", [("(r.abs() <= v) & (c.abs() <= v)", "(r >= -v) & (r < v) & (c >= -v) & (c < v)")],
     {"square_size", "square_centred", "square_symmetric"}, "not symmetric"),
    ("04_frequency_mask", "frequency_filter", [("torch.fft.fftshift(torch.fft.fft2(x), dim=(-2, -1))", "torch.fft.fft2(x)"),
                                               ("torch.fft.ifftshift(F_ * keep, dim=(-2, -1))", "F_ * keep")],
     {"filter_lowpass", "filter_package"}, "fftshift"),
    ("04_frequency_mask", "frequency_filter", [("torch.fft.ifftshift(F_ * keep", "torch.fft.fftshift(F_ * keep")],
     {"filter_package"}, "ifftshift, not fftshift"),   # the same on even sizes: only the hidden odd-sized case catches it
    ("04_frequency_mask", "frequency_filter", [(SOLUTION, "return ref.fft_filter(x, int(M.sum() ** 0.5) // 2, mode)")],
     {"filter_real", "filter_lowpass", "filter_package"}, "name 'ref' is not defined"),   # the set-up used to import ref
    ("04_frequency_mask", "frequency_filter", [("def frequency_filter", "from uad_notebooks import patched as ref\n\ndef frequency_filter"),
                                               (SOLUTION, "return ref.fft_filter(x, int(M.sum() ** 0.5) // 2, mode)")],
     {"filter_real", "filter_lowpass", "filter_package"}, "write the exercise yourself"),
    ("05_threshold_dice", "threshold_at_fpr", [("np.asarray(healthy_maps)[np.asarray(brains) > 0.5]", "np.asarray(healthy_maps).ravel()")],
     {"thr_brain"}, "OUTSIDE the brain"),
    ("05_threshold_dice", "threshold_at_fpr",   # the brain mask multiplied in: the background's zeros stay in the pool
     [("np.asarray(healthy_maps)[np.asarray(brains) > 0.5]", "(np.asarray(healthy_maps) * np.asarray(brains)).ravel()")],
     {"thr_brain"}, "OUTSIDE the brain"),
    ("05_threshold_dice", "threshold_at_fpr", [("float(np.sort(v)[v.size - k - 1])", "float(np.quantile(v, 1 - fpr))")],
     {"thr_fpr"}, "fpr="),
    ("05_threshold_dice", "threshold_at_fpr", [(SOLUTION, "raise NotImplementedError()")],   # exercise 1 unfinished:
     {"thr_fpr", "thr_brain"}, "NotImplementedError"),                                     # exercise 2 keeps its points
    ("05_threshold_dice", "threshold_at_fpr", [(SOLUTION, "return ref.threshold_at_fpr(healthy_maps, fpr, brains)")],
     {"thr_fpr", "thr_brain"}, "name 'ref' is not defined"),
    ("05_threshold_dice", "threshold_at_fpr",
     [(SOLUTION, "from uad_notebooks.metrics import threshold_at_fpr as reference\nreturn reference(healthy_maps, fpr, brains)")],
     {"thr_fpr", "thr_brain"}, "write the exercise yourself"),
    ("05_threshold_dice", "dice_at_healthy_fpr", [("threshold_at_fpr(val_maps, fpr, val_brains)", "threshold_at_fpr(test_maps, fpr, test_brains)")],
     {"dice_threshold_from_healthy"}, "threshold chosen on the test set"),
    ("05_threshold_dice", "dice_at_healthy_fpr",
     [("threshold_at_fpr(val_maps, fpr, val_brains)",
       "threshold_at_fpr(np.where(test_masks > 0.5, test_maps.min(), test_maps), fpr, test_brains)")],
     {"dice_threshold_from_healthy"}, "threshold chosen on the test set"),
    ("05_threshold_dice", "dice_at_healthy_fpr", [("t = threshold_at_fpr(val_maps, fpr, val_brains)", "t = 2.0")],
     {"dice_threshold_from_healthy"}, "not the healthy threshold"),
    ("05_threshold_dice", "dice_at_healthy_fpr", [("threshold_at_fpr(val_maps, fpr, val_brains)", "threshold_at_fpr(val_maps, 0.05, val_brains)")],
     {"dice_threshold_from_healthy"}, "not the healthy threshold"),
    ("05_threshold_dice", "dice_at_healthy_fpr",
     [("threshold_at_fpr(val_maps, fpr, val_brains)", "threshold_at_fpr(val_maps, fpr, np.ones_like(val_brains))")],
     {"dice_threshold_from_healthy"}, "not the healthy threshold"),
    ("05_threshold_dice", "dice_at_healthy_fpr",
     [("pred, gt = (test_maps > t) & inside, (test_masks > 0.5) & inside", "pred, gt = test_maps > t, test_masks > 0.5")],
     {"dice_in_brain"}, "Dice on the wrong pixels"),
    ("05_threshold_dice", "dice_at_healthy_fpr", [("(test_maps > t) & inside", "(test_maps >= t) & inside")],
     {"dice_value"}, "strictly"),
    ("05_threshold_dice", "dice_at_healthy_fpr", [("(1.0 if den == 0 else float(2 * (pred & gt).sum() / den))",
                                                   "float(2 * (pred & gt).sum() / den)")], {"dice_value"}, "|P| + |G| = 0"),
    ("05_threshold_dice", "dice_at_healthy_fpr",   # a mean of per-image Dice instead of one pooled Dice
     [(SOLUTION, "t = threshold_at_fpr(val_maps, fpr, val_brains)\ninside = test_brains > 0.5\n"
                 "pred, gt = (test_maps > t) & inside, (test_masks > 0.5) & inside\n"
                 "den = pred.sum(axis=(1, 2, 3)) + gt.sum(axis=(1, 2, 3))\n"
                 "per_image = np.where(den == 0, 1.0, 2 * (pred & gt).sum(axis=(1, 2, 3)) / np.maximum(den, 1))\n"
                 "return t, float(per_image.mean())")],
     {"dice_value"}, "Pool all in-brain pixels"),
    ("05_threshold_dice", "dice_at_healthy_fpr",
     [(SOLUTION, "from uad_notebooks.metrics import pixel_metrics\nt = threshold_at_fpr(val_maps, fpr, val_brains)\n"
                 "return t, pixel_metrics(test_maps, test_masks, test_brains, threshold=t, n_bins=None)['dice']")],
     {"dice_threshold_from_healthy", "dice_in_brain", "dice_value"}, "write the exercise yourself"),
]

# Correct answers written differently from the solution: each must earn full marks.
VARIANTS = [
    ("01_mae_masking", "patchify", "B, C, H, W = x.shape\np = patch_size\n"
     "return x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 4, 5, 1).reshape(B, -1, p * p * C)"),
    ("01_mae_masking", "random_masking",   # another valid draw: keep the LARGEST noise
     "B, L, D = x.shape\nlen_keep = int(L * (1 - mask_ratio))\n"
     "ids_shuffle = torch.argsort(torch.rand(B, L, generator=generator), dim=1, descending=True)\n"
     "ids_restore = torch.argsort(ids_shuffle, dim=1)\n"
     "x_kept = torch.gather(x, 1, ids_shuffle[:, :len_keep, None].expand(-1, -1, D))\n"
     "return x_kept, (ids_restore >= len_keep).float(), ids_restore"),
    ("01_mae_masking", "random_masking",   # another draw: one random permutation per sample, fancy indexing
     "B, L, D = x.shape\nlen_keep = int(L * (1 - mask_ratio))\n"
     "ids_shuffle = torch.stack([torch.randperm(L, generator=generator) for _ in range(B)])\n"
     "ids_restore = ids_shuffle.argsort(1)\n"
     "return x[torch.arange(B)[:, None], ids_shuffle[:, :len_keep]], (ids_restore >= len_keep).float(), ids_restore"),
    ("01_mae_masking", "restore_order",    # scatter the kept tokens to their places instead of gathering
     "B, L = ids_restore.shape\nD = x_kept.shape[-1]\nids_shuffle = torch.argsort(ids_restore, dim=1)\n"
     "out = mask_token.expand(B, L, D).clone()\n"
     "return out.scatter(1, ids_shuffle[:, :x_kept.shape[1], None].expand(-1, -1, D), x_kept)"),
    ("02_memory_attention", "memory_attention",   # einsum and a hand-written softmax
     "K, V = torch.cat((k, mem_k), -2), torch.cat((v, mem_v), -2)\n"
     "s = torch.einsum('bhld,bhnd->bhln', q, K) / q.shape[-1] ** 0.5\n"
     "e = torch.exp(s - s.amax(-1, keepdim=True))\nw = e / e.sum(-1, keepdim=True)\n"
     "return torch.einsum('bhln,bhnd->bhld', w, V), w"),
    ("02_memory_attention", "memory_mass", "L = w.shape[-1] - n_mem\nreturn w[:, :, :, L:].sum(dim=3).sum(dim=1) / w.shape[1]"),
    ("03_perceptual_loss", "relative_l1",   # sums instead of means, the denominator under no_grad
     "with torch.no_grad(): den = f_real.abs().flatten(1).sum(1)\n"
     "return (f_real - f_fake).abs().flatten(1).sum(1) / den.clamp_min(eps * f_real[0].numel())"),
    ("03_perceptual_loss", "perceptual_map",
     "B = f_real.shape[0]\nden = f_real.abs().reshape(B, -1).mean(1).detach().clamp_min(1e-8)\n"
     "m = (f_real - f_fake).abs().mean(1, keepdim=True) / den[:, None, None, None]\n"
     "return torch.nn.functional.interpolate(m, size=tuple(size), mode='bilinear', align_corners=False)"),
    ("04_frequency_mask", "centred_square",   # slicing instead of a comparison
     "M = torch.zeros(H, W)\nM[max(H // 2 - v, 0):H // 2 + v + 1, max(W // 2 - v, 0):W // 2 + v + 1] = 1\nreturn M"),
    ("04_frequency_mask", "frequency_filter",   # the mask moved to fft2's layout instead of the spectrum to the mask's
     "keep = M if mode == 'low' else 1 - M\nreturn torch.fft.ifft2(torch.fft.fft2(x) * torch.fft.ifftshift(keep)).real"),
    ("05_threshold_dice", "threshold_at_fpr",
     "v = np.asarray(healthy_maps)[np.asarray(brains) > 0.5]\nj = v.size - int(fpr * v.size) - 1\n"
     "return float(np.partition(v, j)[j])"),
    ("05_threshold_dice", "threshold_at_fpr",
     "v = np.asarray(healthy_maps)[np.asarray(brains) > 0.5]\nreturn float(-np.sort(-v)[int(np.floor(fpr * v.size))])"),
    ("05_threshold_dice", "dice_at_healthy_fpr",   # the threshold computed inline, not through exercise 1
     "v = np.sort(val_maps[val_brains > 0.5])\nt = float(v[v.size - int(fpr * v.size) - 1])\n"
     "inside = test_brains > 0.5\np, g = (test_maps > t)[inside], (test_masks > 0.5)[inside]\n"
     "den = p.sum() + g.sum()\nreturn t, 1.0 if den == 0 else 2 * np.logical_and(p, g).sum() / den"),
]


def _package_imports(src: str) -> list[str]:
    "The imports of uad_notebooks (or its modules) in a cell's code, other than uad_notebooks.course; and dynamic imports."
    import ast
    tree = ast.parse("\n".join("pass" if re.match(r"\s*[%!]", l) else l for l in src.split("\n")))
    found = []
    for node in ast.walk(tree):
        mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
        found += [m for m in mods if m.split(".")[0] == "uad_notebooks" and m != "uad_notebooks.course"]
        if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in ("import_module", "__import__"):
            found.append(ast.unparse(node))
    return found


@pytest.mark.parametrize("nb", ASSIGNMENTS, ids=lambda p: p.name)
def test_no_reference_in_reach(nb):
    """No cell outside the solutions (set-up, checks with their hidden tests, pictures) imports the package's versions:
    the checks compare with properties and with numbers stored when the assignment was written, so a student's
    namespace holds no reference to call or copy; only `uad_notebooks.course` (for `assert_own_code`) is imported."""
    cells = [c for c in read_notebook(nb)["cells"] if c["cell_type"] == "code" and not is_solution(c)]
    setup = [c for c in cells if nbgrader_meta(c).get("grade_id") == "setup"]
    assert len(setup) == 1 and "from uad_notebooks.course import assert_own_code" in cell_source(setup[0]), nb.name
    for c in cells:
        used = _package_imports(cell_source(c))
        assert not used, f"{nb.name}, cell {c.get('id')} ({nbgrader_meta(c).get('grade_id', 'no grade_id')}) imports {used}"
        assert not re.search(r"\bref\.", cell_source(c)), f"{nb.name}, cell {c.get('id')} still uses `ref.`"


def plant(name: str, cell_id: str, subs, dst: Path) -> Path:
    "Copy assignment `name` to `dst` with text substitutions inside its solution cell `cell_id` (each must match once)."
    nb = read_notebook(COURSE / f"{name}.ipynb")
    cell = next(c for c in nb["cells"] if nbgrader_meta(c).get("grade_id") == cell_id)
    src = cell_source(cell)
    for old, new in subs:
        if old is SOLUTION:   # the whole region between the markers, markers dropped, at the BEGIN line's indent
            lines = src.split("\n")
            b, e = (next(i for i, l in enumerate(lines) if m in l) for m in ("### BEGIN SOLUTION", "### END SOLUTION"))
            indent = lines[b][:len(lines[b]) - len(lines[b].lstrip())]
            src = "\n".join(lines[:b] + [indent + l for l in new.split("\n")] + lines[e + 1:])
            continue
        assert src.count(old) == 1, f"{name}/{cell_id}: {old!r} occurs {src.count(old)} times"
        src = src.replace(old, new)
    cell["source"] = src
    out = dst / f"{name}.ipynb"
    out.write_text(json.dumps(nb))
    return out


@pytest.mark.parametrize("name, cell_id, subs, lost, phrase", MISTAKES,
                         ids=[f"{m[0][:2]}-{m[1]}-{i}" for i, m in enumerate(MISTAKES)])
def test_planted_mistake_loses_exactly_its_points(name, cell_id, subs, lost, phrase, tmp_path):
    rep = grade(plant(name, cell_id, subs, tmp_path), source=COURSE / f"{name}.ipynb", isolate=False)
    failed = {c.grade_id for c in rep.checks if c.points < c.max_points}
    assert failed == lost, f"expected exactly {sorted(lost)} to fail, got {sorted(failed)}\n{rep}"
    assert rep.total == rep.max_total - sum(c.max_points for c in rep.checks if c.grade_id in lost)
    errors = " ".join(c.error for c in rep.checks if c.error)
    assert phrase in errors, f"no check names the mistake ({phrase!r}):\n{rep}"


@pytest.mark.parametrize("name, cell_id, body", VARIANTS, ids=[f"{v[0][:2]}-{v[1]}-{i}" for i, v in enumerate(VARIANTS)])
def test_correct_variant_earns_full_marks(name, cell_id, body, tmp_path):
    rep = grade(plant(name, cell_id, [(SOLUTION, body)], tmp_path), source=COURSE / f"{name}.ipynb", isolate=False)
    assert rep.total == rep.max_total, str(rep)


def test_edited_checks_are_restored(tmp_path):
    "A submission that deletes a check's assertions still fails it: locked cells come from the source."
    src = COURSE / "01_mae_masking.ipynb"
    out = generate(src, tmp_path)[0]
    nb = read_notebook(out)
    for c in nb["cells"]:
        if nbgrader_meta(c).get("grade") and c["cell_type"] == "code": c["source"] = "pass"
    out.write_text(json.dumps(nb))
    rep = grade(out, source=src, isolate=False)
    assert rep.total == 0 and any("was edited" in w for w in rep.warnings), str(rep)


def test_generate_refuses_to_overwrite(tmp_path):
    src = ASSIGNMENTS[0]
    out = generate(src, tmp_path)[0]
    out.write_text("the student's work")
    with pytest.raises(CourseError, match="not overwriting"):
        generate(src, tmp_path)
    assert out.read_text() == "the student's work"
    generate(src, tmp_path, force=True)
    assert read_notebook(out)["cells"]


def test_bad_inputs_give_clear_errors(tmp_path):
    (tmp_path / "essay.ipynb").write_text("my essay, not JSON")
    with pytest.raises(CourseError, match="essay.ipynb: not a Jupyter notebook"):
        grade(tmp_path / "essay.ipynb")
    with pytest.raises(CourseError, match="no such file"):
        grade(tmp_path / "nothing.ipynb")
    plain = {"cells": [{"cell_type": "code", "metadata": {}, "source": "x = 1", "outputs": [], "execution_count": None}],
             "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (tmp_path / "plain.ipynb").write_text(json.dumps(plain))
    with pytest.raises(CourseError, match="has no auto-graded cells"):
        grade(tmp_path / "plain.ipynb", isolate=False)
    with pytest.raises(CourseError, match="has no auto-graded cells"):
        generate(tmp_path / "plain.ipynb", tmp_path / "out")
    nb = read_notebook(ASSIGNMENTS[0])
    test = next(c for c in nb["cells"] if nbgrader_meta(c).get("grade"))
    nb["cells"].append(test)   # a copied check keeps its grade_id
    (tmp_path / "dup.ipynb").write_text(json.dumps(nb))
    with pytest.raises(CourseError, match=f"grade_id '{nbgrader_meta(test)['grade_id']}' is used by cells"):
        grade(tmp_path / "dup.ipynb", source=tmp_path / "dup.ipynb", isolate=False)
    with pytest.raises(CourseError, match="never closed"):
        student_version({"cells": [{"cell_type": "code", "metadata": {}, "source": "### BEGIN SOLUTION\nx = 1"}, test]})


def test_command_line(tmp_path):
    "`uad-course generate` then `uad-course grade --json` in a subprocess (the grader's own fresh process inside)."
    src = COURSE / "05_threshold_dice.ipynb"
    r = subprocess.run([str(CLI), "generate", str(src), "-o", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "wrote" in r.stdout, r.stderr
    r = subprocess.run([str(CLI), "generate", str(src), "-o", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "not overwriting" in r.stderr
    r = subprocess.run([str(CLI), "grade", str(tmp_path / src.name), "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["total"] == 0 and res["max_total"] == 10 and res["source"].endswith(src.name)
    assert all("NotImplementedError" in c["error"] for c in res["checks"])
    (tmp_path / "notes.txt").write_text("hello")
    r = subprocess.run([str(CLI), "grade", str(tmp_path / "notes.txt")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "not a Jupyter notebook" in r.stderr


def test_generate_all(tmp_path, capsys):
    from uad_notebooks.course import main
    assert main(["generate", "--all", str(COURSE), "-o", str(tmp_path / "student")]) == 0
    assert sorted(p.name for p in (tmp_path / "student").iterdir()) == [p.name for p in ASSIGNMENTS]
    assert main(["generate", "--all", str(COURSE), "-o", str(tmp_path / "student")]) == 1   # nothing overwritten
    assert "not overwriting" in capsys.readouterr().err

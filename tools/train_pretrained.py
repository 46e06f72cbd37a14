"""Train a shipped demo model from scratch with its recipe, and (with --ship) store it in the package with its record.

    python tools/train_pretrained.py mddpm/demo --out runs/pretrained --ship     # the shipped model (seed 0)
    python tools/train_pretrained.py mddpm/demo --out runs/pretrained --seed 1 --max-steps 1000   # a repeat for intervals
    python tools/train_pretrained.py --list

The recipes are `uad_notebooks.compare.PRETRAINED`; training resumes from out/<name>/seed<seed>/ when interrupted.
With --ship the weights go (half precision) to the package's `uad_notebooks/weights/` (or --weights DIR), then are
loaded back from there and evaluated on the demo's validation and test splits, and the manifest entry records the
metrics, the recipe, the selection, the commit, the machine, the wall time and this command.
"""
import argparse, json, platform, subprocess, sys, time
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", nargs="?", help="a recipe name, e.g. mddpm/demo (see --list)")
    ap.add_argument("--out", default="runs/pretrained", help="checkpoints, logs, snapshots and info.json")
    ap.add_argument("--seed", type=int, default=0, help="training seed (the shipped models use 0)")
    ap.add_argument("--max-steps", type=int, default=None, help="cap every stage (repeats for intervals)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: two runs side by side on 2 cores)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--ship", action="store_true", help="store the weights in the package with their record")
    ap.add_argument("--weights", default=None, help="weights folder instead of the package's")
    ap.add_argument("--list", action="store_true", help="list the recipes")
    a = ap.parse_args(argv)

    import torch
    torch.set_num_threads(a.threads)
    from uad_notebooks.compare import PRETRAINED, train_pretrained, load_splits
    if a.list or not a.name:
        for n, r in PRETRAINED.items(): print(f"{n:16s} {r['method']:10s} {r['kw']}")
        return 0
    if a.name not in PRETRAINED: ap.error(f"unknown recipe {a.name!r}; known: {', '.join(PRETRAINED)}")
    if a.ship and (a.seed != 0 or a.max_steps is not None): ap.error("--ship stores the full recipe at seed 0 only")
    from uad_notebooks.core import git_commit, to_jsonable, write_json
    from uad_notebooks.evaluate import evaluate, predict
    from uad_notebooks.pretrained import save_pretrained, load_pretrained, read_manifest, WEIGHTS_DIR

    cmd = "python tools/train_pretrained.py " + " ".join(sys.argv[1:] if argv is None else argv)
    commit = git_commit()
    t0 = time.time()
    model, info = train_pretrained(a.name, a.out, seed=a.seed, device=a.device, max_steps=a.max_steps)
    run_dir = Path(a.out) / a.name.replace("/", "-") / f"seed{a.seed}"
    wall = 0.0   # training time: the last logged time of every stage (it counts across resumes), not this call's
    for log in run_dir.rglob("log.csv"):
        rows = log.read_text().splitlines()
        if len(rows) > 1: wall += float(rows[-1].split(",")[rows[0].split(",").index("time")])
    wall = wall or time.time() - t0
    record = dict(info, wall_seconds=wall, commit=commit, command=cmd, threads=a.threads,
                  machine=dict(processor=platform.processor() or platform.machine(), platform=platform.platform(),
                               cpu_count=__import__("os").cpu_count()),
                  torch=torch.__version__, finished=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    write_json(record, run_dir / "info.json", overwrite=True)
    print(f"{a.name} seed {a.seed}: {info['steps']} steps, best {info.get('best_step')}, {wall:.0f} s -> {run_dir}")
    if not a.ship: return 0

    r = PRETRAINED[a.name]
    method, preset = a.name.split("/")
    folder = Path(a.weights) if a.weights else WEIGHTS_DIR
    sel = dict(rule=info.get("selection") or "lowest validation loss on healthy validation slices",
               needs_anomalies=False, best_step=info.get("best_step"), best_val_loss=info.get("best_val_loss"),
               stopped_early=info.get("stopped_early"))
    entry = save_pretrained(model, method, preset, r["factory"], r["factory_kw"], folder=folder, exclude=r.get("exclude", ()),
                            attrs=r.get("attrs"), calls=r.get("calls", ()), overwrite=True, steps=info["steps"],
                            recipe=dict(method=r["method"], **r["kw"]), selection=sel, data=info["data"],
                            trained=dict(commit=commit, wall_seconds=wall, threads=a.threads, machine=record["machine"],
                                         torch=torch.__version__, finished=record["finished"]),
                            command=f"python tools/train_pretrained.py {a.name} --ship")
    # the metrics of the stored (half-precision) weights, loaded back the way users load them
    shipped = load_pretrained(method, preset, folder=folder, device=a.device)
    splits = load_splits("demo")
    m = evaluate(shipped, splits["test"], splits["val"], n_boot=1000, seed=0, device=a.device)
    mv = evaluate(shipped, splits["val"], None, n_boot=0, seed=0, device=a.device, pixel=False)
    small = load_splits("demo", size="small")["test"]
    check = predict(shipped, small, device=a.device, maps=False, progress=False)
    metrics = dict(test=dict(image=m["image"], pixel=m["pixel"]), val=dict(image=mv["image"]),
                   check=dict(split="demo small test", n=len(check.scores), scores=[round(float(s), 7) for s in check.scores]))
    man = read_manifest(folder)
    man[a.name].update(to_jsonable(dict(metrics=metrics)))
    write_json(dict(sorted(man.items())), folder / "manifest.json", overwrite=True)
    print(json.dumps(dict(test_image_auroc=m["image"]["auroc"], test_pixel=(m["pixel"] or {}).get("auroc"),
                          val_image_auroc=mv["image"]["auroc"], sha256=entry["sha256"], size=entry["size_bytes"]), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Why is a MemMC-MAE of 30 steps better at finding lesions than one of 3000? Its map follows the image's brightness.
For seed-0 snapshots of a budget run: pixel AUPRC over the lesion slices of the demo test split, and the rank
correlation (Spearman) between the anomaly map and the image intensity over all brain pixels of those slices.

    python benchmarks/quality/budget_demo/early_check.py runs/budget_demo_runs memmc_mae 30,100,300,1000,3000 > benchmarks/quality/budget_demo/early_check.txt
    python benchmarks/quality/budget_demo/early_check.py runs/budget_demo_runs convae 30,100,300,1000,3000 >> benchmarks/quality/budget_demo/early_check.txt

runs/budget_demo_runs is the runs_dir of the budget run (README.md here)."""
import sys
import numpy as np, torch
from scipy.stats import spearmanr
from uad_notebooks.compare import load_splits, LABELS
from uad_notebooks.budget import snapshot_model
from uad_notebooks.evaluate import predict
from uad_notebooks.metrics import pixel_metrics

torch.set_num_threads(1)
runs_dir, method, steps = sys.argv[1], sys.argv[2], [int(s) for s in sys.argv[3].split(",")]
test = load_splits("demo")["test"]
les = test.subset(torch.as_tensor(np.flatnonzero(test.labels.numpy() == 1)))
print(f"{LABELS[method]}, seed 0, {len(les)} lesion slices of the demo test split")
print(f"{'steps':>6s} {'pixel AUPRC':>12s} {'Spearman(map, intensity) in brain':>34s}")
for step in steps:
    p = predict(snapshot_model(runs_dir, f"{method}/demo", 0, step), les, progress=False)
    b = p.brains[:, 0] > 0.5
    rho = spearmanr(p.maps[:, 0][b], les.images.numpy()[:, 0][b]).correlation
    print(f"{step:6d} {pixel_metrics(p.maps, p.masks, p.brains)['auprc']:12.3f} {rho:34.3f}")

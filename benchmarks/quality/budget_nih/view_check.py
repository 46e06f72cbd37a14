"""Is the NIH budget curve about pneumonia or about the view? Scores of MemMC-MAE snapshots (and of three no-learning
image statistics) split by view position (PA / AP), and how well each score tells AP from PA films.

    python benchmarks/quality/budget_nih/view_check.py DATA/nih_all runs/budget_nih_runs memmc_mae,dpa > benchmarks/quality/budget_nih/view_check.txt

DATA/nih_all is the prepared subset (README.md here), runs/budget_nih_runs the runs_dir of the budget runs, then the
methods whose seed-0 snapshots are scored."""
import sys
import numpy as np, pandas as pd, torch
from sklearn.metrics import roc_auc_score
from uad_notebooks.data import load_dataset
from uad_notebooks.budget import snapshot_model, snapshots, budget_of
from uad_notebooks.compare import LABELS
from uad_notebooks.evaluate import predict

torch.set_num_threads(1)
data_dir, runs_dir = sys.argv[1:3]
methods = sys.argv[3].split(",") if len(sys.argv) > 3 else ["memmc_mae"]
ds = load_dataset("nih_cxr14", "test", data_dir=data_dir, img_size=64)
ds.images = (ds.images + 1) / 2                      # as repro_budget_curves: the [-1, 1] contract back to [0, 1]
man = pd.read_csv(f"{data_dir}/manifest.csv"); man = man[man.split == "test"].reset_index(drop=True)
if len(man) != len(ds): raise ValueError(f"{data_dir}/manifest.csv: {len(man)} test rows, the loader gave {len(ds)}")
y, view = ds.labels.numpy(), man["view"].fillna("unknown").values
print("test images by view (rows) and label (0 = No Finding, 1 = Pneumonia):")
print(pd.crosstab(view, y).to_string(), "\n")
print(f"{'score':32s} {'AUROC all':>9s} {'within PA':>9s} {'within AP':>9s} {'AP vs PA':>9s}")
def report(name, s):
    cells = [roc_auc_score(y, s)] + [roc_auc_score(y[view == v], s[view == v]) for v in ("PA", "AP")]
    known = view != "unknown"
    cells.append(roc_auc_score(view[known] == "AP", s[known]))
    print(f"{name:32s} " + " ".join(f"{c:9.3f}" for c in cells))
x = ds.images.reshape(len(ds), -1).numpy()
report("image mean", x.mean(1)); report("image std", x.std(1)); report("99th percentile", np.percentile(x, 99, axis=1))
for m in methods:
    for step in sorted(snapshots(runs_dir, f"{m}/demo", 0)):
        model = snapshot_model(runs_dir, f"{m}/demo", 0, step)
        total = budget_of(runs_dir, f"{m}/demo", 0, step)["steps"]   # DPA: the earlier stages' steps counted too
        report(f"{LABELS[m]}, {total} steps", np.asarray(predict(model, ds, progress=False).scores))

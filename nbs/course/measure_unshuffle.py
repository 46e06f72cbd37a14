"""What a forgotten un-shuffle does to a small MAE: the numbers in the answer key of assignment 1 (instructor material).

    OMP_NUM_THREADS=1 nice python nbs/course/measure_unshuffle.py          # about 5 CPU-minutes, writes JSON to stdout

Four `mae_demo` models on the small demo split, same seed, data order and recipe (600 AdamW steps, the `fit_mae_uad`
demo recipe); they differ only in whether the decoder un-shuffles (`forward_decoder` with the gather left out) and
whether the encoder adds its position embeddings. Each is scored by the squared error on the hidden patches of the
validation slices (mask ratio 0.75, 4 fixed mask draws) and by the pixel AUROC of its anomaly map on the validation
lesions (in-brain pixels). Two predictors that learn nothing are scored on the same hidden patches: one average
training patch everywhere, and the average training patch at each position.
"""
import json, sys, time
import torch
from sklearn.metrics import roc_auc_score
from uad_notebooks.data import load_dataset
from uad_notebooks.mae import mae_demo
from uad_notebooks.masking import patchify
from uad_notebooks.train import train

STEPS = int(sys.argv[1]) if len(sys.argv) > 1 else 600
DRAWS = [torch.Generator().manual_seed(100 + s) for s in range(4)]

def decoder_without_unshuffle(self, x, ids_restore):
    "MAE.forward_decoder with the un-shuffle forgotten: mask tokens appended, the order left shuffled."
    x = self.decoder_embed(x)                                                  # (B, 1+L_keep, Dd)
    B, L = ids_restore.shape
    x_ = torch.cat([x[:, 1:], self.mask_token.expand(B, L + 1 - x.shape[1], -1)], dim=1)   # no gather
    x = torch.cat([x[:, :1], x_], dim=1) + self.decoder_pos_embed
    for blk in self.decoder_blocks: x = blk(x)
    return self.decoder_pred(self.decoder_norm(x))[:, 1:]

tr, va = load_dataset("demo", "train", size="small"), load_dataset("demo", "val", size="small")
stack = lambda ds, k: torch.stack([ds[i][k] for i in range(len(ds))])
xt, xv, mv, bv = stack(tr, "image"), stack(va, "image"), stack(va, "mask"), stack(va, "brain")
masks = [mae_demo()(xv, 0.75, torch.Generator().manual_seed(100 + s))[2] for s in range(4)]   # the hidden patches

def hidden_mse(pred):
    "Squared error on the hidden validation patches, mean over the 4 mask draws; pred (B, L, p*p) or broadcastable."
    e = ((patchify(xv, 8) - pred) ** 2).mean(-1)
    return sum(((e * m).sum() / m.sum()).item() for m in masks) / len(masks)

@torch.no_grad()
def score(model):
    model.eval()
    mse = sum(model(xv, 0.75, torch.Generator().manual_seed(100 + s))[0].item() for s in range(4)) / 4
    amap = sum(model.anomaly_map(xv, 0.75, torch.Generator().manual_seed(200 + s)) for s in range(4)) / 4
    inb = bv > 0.5
    return {"val_hidden_mse": mse, "pixel_auroc": roc_auc_score(mv[inb].numpy() > 0.5, amap[inb].numpy())}

pt = patchify(xt, 8)
res = {"steps": STEPS, "n_train": len(xt), "n_val": len(xv),
       "one_average_patch": hidden_mse(pt.mean((0, 1))), "average_patch_per_position": hidden_mse(pt.mean(0))}
for unshuffle in (True, False):
    for encoder_pos in (True, False):
        torch.manual_seed(0)
        model = mae_demo()
        if not unshuffle: model.forward_decoder = decoder_without_unshuffle.__get__(model)
        if not encoder_pos: model.pos_embed.zero_()
        t0 = time.time()
        train(model, tr, max_steps=STEPS, batch_size=32, lr=8e-3 * 32 / 256, weight_decay=0.05, betas=(0.9, 0.95),
              schedule="cosine", warmup_steps=max(1, STEPS // 25), device="cpu", seed=0, progress=False, amp=False)
        name = f"{'with' if unshuffle else 'without'}_unshuffle" + ("" if encoder_pos else "_no_encoder_pos")
        res[name] = {**score(model), "seconds": round(time.time() - t0, 1)}
        print(name, res[name], file=sys.stderr, flush=True)
print(json.dumps(res, indent=1))

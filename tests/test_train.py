"""The training loop: exact resume after SIGKILL, DDP under torchrun equals one process, checkpoints load safely."""
import os, signal, subprocess, sys, textwrap
from pathlib import Path

import pytest
import torch

from uad_notebooks.data import ArrayDataset
from uad_notebooks.train import train, load_checkpoint

SCRIPT = textwrap.dedent('''
    import os, signal, sys, torch
    from torch import nn
    from uad_notebooks.data import ArrayDataset
    from uad_notebooks.train import train

    out, kill_at, noise = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    bs, steps = int(sys.argv[4]), int(sys.argv[5])

    class M(nn.Module):
        def __init__(self):
            super().__init__(); self.l = nn.Linear(16, 16); self.calls = 0
        def training_loss(self, b):
            self.calls += 1
            if self.calls == kill_at: os.kill(os.getpid(), signal.SIGKILL)
            x = b["image"].flatten(1)
            return ((self.l(x + noise * torch.randn_like(x)) - x) ** 2).mean()

    g = torch.Generator().manual_seed(0)
    ds = ArrayDataset(torch.rand(64, 1, 4, 4, generator=g), torch.zeros(64))
    torch.manual_seed(1); m = M()
    train(m, ds, out_dir=out, max_steps=steps, batch_size=bs, lr=1e-2, ckpt_every=4, progress=False,
          schedule="cosine", warmup_steps=3, grad_clip=1.0, device="cpu")
    rank = int(os.environ.get("RANK", 0))
    torch.save(m.state_dict(), os.path.join(out, f"final_rank{rank}.pt"))
    import torch.distributed as dist
    open(os.path.join(out, f"ddp_rank{rank}.txt"), "w").write(str(dist.is_initialized()))
''')


def _run(args, tmp_path, torchrun=None):
    script = tmp_path / "script.py"; script.write_text(SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable] + (["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun}"] if torchrun else [])
    return subprocess.run(cmd + [str(script)] + [str(a) for a in args], env=env, capture_output=True, text=True, timeout=300)


def test_resume_after_sigkill_is_exact(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    r = _run([a, 0, 0.1, 8, 30], tmp_path); assert r.returncode == 0, r.stderr
    killed = _run([b, 15, 0.1, 8, 30], tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert load_checkpoint(b / "train" / "last.pt")["step"] == 12  # the last checkpoint before the kill
    assert not (b / "final_rank0.pt").exists()
    r = _run([b, 0, 0.1, 8, 30], tmp_path); assert r.returncode == 0, r.stderr
    wa = torch.load(a / "final_rank0.pt", weights_only=True); wb = torch.load(b / "final_rank0.pt", weights_only=True)
    for k in wa: assert torch.equal(wa[k], wb[k]), k
    log = (b / "train" / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,") and len(log) == 1 + 3  # log_every=10: steps 10, 20, 30


def test_ddp_two_ranks_match_one_process(tmp_path):
    """2 CPU ranks (gloo) with batch 4 each take the same steps as 1 process with batch 8: same sampler, averaged grads."""
    one, two = tmp_path / "one", tmp_path / "two"
    r = _run([one, 0, 0.0, 8, 12], tmp_path); assert r.returncode == 0, r.stderr
    r = _run([two, 0, 0.0, 4, 12], tmp_path, torchrun=2); assert r.returncode == 0, r.stdout + r.stderr
    w1 = torch.load(one / "final_rank0.pt", weights_only=True)
    w2 = [torch.load(two / f"final_rank{i}.pt", weights_only=True) for i in (0, 1)]
    for k in w1:
        assert torch.equal(w2[0][k], w2[1][k]), f"ranks disagree on {k}"
        assert torch.allclose(w1[k], w2[0][k], atol=1e-5), f"DDP differs from one process on {k}"
    assert (two / "train" / "last.pt").exists()


def test_torchrun_one_process_runs_the_ddp_path(tmp_path):
    """`torchrun --nproc_per_node 1` starts the process group (the DDP path), and equals a plain run."""
    one, tr = tmp_path / "one", tmp_path / "tr"
    r = _run([one, 0, 0.0, 8, 6], tmp_path); assert r.returncode == 0, r.stderr
    r = _run([tr, 0, 0.0, 8, 6], tmp_path, torchrun=1); assert r.returncode == 0, r.stdout + r.stderr
    assert (one / "ddp_rank0.txt").read_text() == "False" and (tr / "ddp_rank0.txt").read_text() == "True"
    w1, w2 = (torch.load(d / "final_rank0.pt", weights_only=True) for d in (one, tr))
    for k in w1: assert torch.allclose(w1[k], w2[k], atol=1e-6), k


class _AE(torch.nn.Module):
    def __init__(self): super().__init__(); self.l = torch.nn.Linear(16, 16)
    def training_loss(self, b): x = b["image"].flatten(1); return ((self.l(x) - x) ** 2).mean()


def test_checkpoint_loads_weights_only(tmp_path):
    ds = ArrayDataset(torch.rand(16, 1, 4, 4), torch.zeros(16))
    res = train(_AE(), ds, out_dir=tmp_path, max_steps=2, batch_size=8, progress=False)
    ck = torch.load(res.checkpoint, weights_only=True)  # must not need pickled objects
    assert ck["step"] == 2 and ck["done"] and set(ck["model"]) == {"l.weight", "l.bias"}


def test_bad_arguments(tmp_path):
    ds = ArrayDataset(torch.rand(16, 1, 4, 4), torch.zeros(16))
    with pytest.raises(ValueError, match="lr must be positive"): train(_AE(), ds, lr=0)
    with pytest.raises(ValueError, match="schedule must be"): train(_AE(), ds, schedule="linear", progress=False)
    with pytest.raises(ValueError, match="unknown device"): train(_AE(), ds, device="tpu")

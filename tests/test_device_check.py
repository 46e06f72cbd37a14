"""benchmarks/device_check.py (issue 15): the CPU rehearsal of the one-command GPU check, end to end through its shell
entry point, and the pieces that need no run (summary, exit status, job runner, bundle selection, log archive)."""
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks import device_check as dc  # noqa: E402


def test_quick_rehearsal_through_the_shell_entry_point(tmp_path):
    "Every step kind runs on the CPU at tiny sizes, passes, and leaves finite figures, a summary and a log archive."
    out, work = tmp_path / "out", tmp_path / "work"
    env = dict(os.environ, DEVICE="cpu", PYTHON=sys.executable, OUT=str(out), UAD_DEVICE_BUNDLE=str(tmp_path / "no_bundle"))
    t0 = time.time()
    p = subprocess.run(["bash", str(REPO / "benchmarks" / "device_check.sh"), "--quick", "--work", str(work)], cwd=REPO,
                       env=env, capture_output=True, text=True, timeout=1800)
    s = json.loads((out / "summary.json").read_text())
    failed = {r["step"]: [c for c in r["checks"] if not c["ok"]] or r["error"] or r["status"] for r in s["steps"] if r["status"] != "passed"}
    assert p.returncode == 0 and not failed, (p.returncode, failed, p.stdout[-3000:], p.stderr[-2000:])
    assert [r["step"] for r in s["steps"]] == list(dc.STEPS) and s["passed"]
    for r in s["steps"]:
        assert r["checks"] and all(c["ok"] for c in r["checks"]) and r["figures"], r["step"]
        assert dc.nonfinite_paths(r["figures"]) == [], r["step"]
    f = {r["step"]: r["figures"] for r in s["steps"]}
    assert f["env"]["peak"]["float32"]["gflops"] > 0 and f["env"]["peak"]["bfloat16"]["gflops"] > 0
    assert f["notebooks"]["repro_baseline_ae"]["device"] == "cpu" and 0 <= f["notebooks"]["repro_baseline_ae"]["image_auroc"] <= 1
    for m in dc.METHODS:
        assert f"{m}.first_loss_amp_vs_fp32_rel" in f["train"], m
    assert f["train"]["resume_amp"]["resumed_from"] == 4 and f["train"]["resume_amp"]["exact"]  # killed at 5, checkpoint at 4
    assert f["train"]["compile"]["graphs"] >= 1
    for m in dc.METHODS:  # PerceptualAE too: its progressive stages leave parameters unused, DDP must be told
        assert f["ddp"][m]["plain_ddp_wrappings"] == 0 and f["ddp"][m]["ddp_max_rel_diff"] <= 1e-5, m
    assert "left_out" not in f["ddp"]
    assert any(k.startswith("methods: baseline_ae demo train") for k in f["bench"])
    assert f["bench"]["target_vit_b16_bf16_40pct"]["status"].startswith("not measured")  # CPU: judged, not met or missed
    md = (out / "summary.md").read_text()
    assert md.startswith("# Device check on") and "PASSED" in md.splitlines()[0]
    for st in dc.STEPS:
        assert f"## {st}: passed" in md
    assert "device_check.sh: no wheels" in (out / "console.log").read_text()
    with tarfile.open(out / dc.ARCHIVE) as tar:
        names = tar.getnames()
    assert any(n.endswith("repro_baseline_ae/out/metrics.json") for n in names)
    assert any(n.endswith("devcheck-methods-quick.json") for n in names) and any(n.endswith("ddp/ddp.log") for n in names)
    assert not any(n.endswith(".pt") for n in names)
    print(f"quick rehearsal: {time.time() - t0:.0f} s wall, {s['cpu_s_children']:.0f} CPU s in child processes")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_device_fails_the_run(tmp_path):
    "--device cuda without a GPU: the env step fails, later steps are not run, the summary says so, the exit status is 1."
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "benchmarks.device_check", "run", "--device", "cuda", "--steps", "env,train",
                        "--out", str(out), "--work", str(tmp_path / "work")], cwd=REPO, capture_output=True, text=True,
                       timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-2000:]
    s = json.loads((out / "summary.json").read_text())
    env, train = s["steps"]
    assert env["status"] == "failed" and not s["passed"] and s["failed_steps"] == ["env", "train"]
    bad = [c for c in env["checks"] if not c["ok"]]
    assert [c["name"] for c in bad] == ["device cuda usable"] and "is_available() is False" in bad[0]["detail"]
    assert train["status"] == "not run" and "found no usable cuda" in train["error"]
    assert "FAILED" in (out / "summary.md").read_text().splitlines()[0]


def test_summary_writer_and_exit_status(tmp_path):
    ok = dc.step_record("env", "first")
    ok["checks"].append(dc.check("a holds", True, "fine")); ok["figures"] = {"x": 1.5, "y": [1, 2]}
    bad = dc.step_record("train", "second")
    bad["checks"].append(dc.check("b holds", True)); bad["figures"] = {"loss": [0.5, float("nan")]}
    summary = dict(created_at="now", command="cmd", device="cpu", quick=True, git_commit="abc", settings=dict(budget_s=10),
                   steps=[dc.finish(ok, 1.0), dc.finish(bad, 2.0)], machine={}, total_s=3.0)
    assert ok["status"] == "passed" and bad["status"] == "failed"  # a NaN figure fails its step
    assert bad["checks"][-1] == dict(name="every figure is finite", ok=False, detail="loss[1]")
    assert dc.exit_code(summary) == 1
    js, md = dc.write_summary(summary, tmp_path)
    data = json.loads(js.read_text())
    assert data["failed_steps"] == ["train"] and data["passed"] is False
    text = md.read_text()
    assert "FAILED" in text.splitlines()[0] and "| every figure is finite | no | loss[1] |" in text and "## env: passed" in text
    summary["steps"] = summary["steps"][:1]
    assert dc.exit_code(summary) == 0
    empty = dc.step_record("ddp")
    assert dc.finish(empty)["status"] == "failed"  # a step with no checks proves nothing
    assert dc.exit_code(dict(steps=[])) == 1


def test_job_runner_results_failures_and_limits(tmp_path):
    py = sys.executable
    good = dc.Job("good", [py, "-c", f"print('noise'); print({dc.MARK!r} + '{{\"v\": 2}}')"], 60, tmp_path / "good.log")
    fails = dc.Job("fails", [py, "-c", "import sys; print('boom'); sys.exit(3)"], 60, tmp_path / "fails.log")
    pidfile = tmp_path / "child.pid"
    hangs = dc.Job("hangs", [py, "-c", "import subprocess, time; p = subprocess.Popen(['sleep', '300']); "
                             f"open({str(pidfile)!r}, 'w').write(str(p.pid)); time.sleep(300)"], 2, tmp_path / "hangs.log")
    late = dc.Job("late", [py, "-c", "pass"], 60, tmp_path / "late.log")
    t = time.time()
    dc.run_jobs([good, fails, hangs], parallel=3, deadline=time.time() + 60)
    dc.run_jobs([late], parallel=1, deadline=time.time() + 1)  # less than the 5 s a job needs to be started
    assert time.time() - t < 40
    assert good.returncode == 0 and good.result == {"v": 2} and dc.job_problem(good) is None and good.cpu_s >= 0
    assert fails.returncode == 3 and "exit 3" in dc.job_problem(fails) and "boom" in dc.job_problem(fails)
    assert hangs.timed_out and hangs.returncode != 0 and "stopped after" in dc.job_problem(hangs)
    assert not late.started and dc.job_problem(late) == "not started: out of time"
    psutil = pytest.importorskip("psutil")
    child = int(pidfile.read_text())
    time.sleep(0.5)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE  # the grandchild was killed too


def test_bundle_selects_what_the_device_lacks():
    rows = [dict(metadata=dict(name=n, version=v)) for n, v in
            [("PyYAML", "6.0"), ("typing_extensions", "4.1"), ("papermill", "2.7.0"), ("jupyter_client", "8.1"),
             ("debugpy", "1.8"), ("Jupyter-Client", "8.1")]]
    present = {dc.norm(n) for n in dc.DEVICE_HAS.split()}
    assert dc.norm("Typing_Extensions") == "typing-extensions" and "pyyaml" in present and "torch" in present
    assert dc.select_missing(rows, present, {"debugpy"}) == [("papermill", "2.7.0"), ("jupyter-client", "8.1")]
    with pytest.raises(ValueError, match="two versions of jupyter-client"):
        dc.select_missing(rows + [dict(metadata=dict(name="jupyter_client", version="9.0"))], present)


def test_archive_leaves_out_checkpoints_and_fits_its_limit(tmp_path):
    work = tmp_path / "work"; (work / "a").mkdir(parents=True)
    for i, kib in enumerate((50, 120, 300)):
        (work / "a" / f"f{i}.bin").write_bytes(os.urandom(kib * 1024))  # incompressible
    (work / "a" / "last.pt").write_bytes(b"0" * 1000); (work / "log.txt").write_text("hello")
    info = dc.make_archive(work, tmp_path / "x.tar.gz", limit=250 * 1024)
    assert info["bytes"] <= 250 * 1024 and "a/f2.bin" in info["left_out"]
    with tarfile.open(tmp_path / "x.tar.gz") as tar:
        names = tar.getnames()
    assert "device_check/log.txt" in names and "device_check/a/f0.bin" in names and not any(n.endswith(".pt") for n in names)


def test_bad_arguments():
    for argv, msg in ((["run", "--out", "x", "--steps", "env,gpu"], "--steps"), (["run", "--out", "x", "--device", "tpu"], "--device"),
                      (["run", "--out", "x", "--methods", "vae"], "--methods")):
        with pytest.raises(SystemExit, match=msg):
            dc.parse_args(argv)
    with pytest.raises(SystemExit, match="--notebooks"):
        dc.notebook_names(["repro_nothing"])
    a = dc.parse_args(["run", "--out", "x", "--methods", "perceptual_ae,mddpm"])
    assert a.methods == ["perceptual_ae", "mddpm"] and a.ddp_methods == ["perceptual_ae", "mddpm"]  # DDP_LEFT_OUT is empty
    assert dc.notebook_names(None) == sorted(p.stem for p in (REPO / "nbs").glob("repro_*.ipynb"))

"""The main job end to end, at CI size: ``train.full`` trains, saves, reloads and generates; the
``sald-fast`` CLI writes a playable animation, a ``.pose`` file, an SMPL-X mesh video (synthetic
model file) and an ``.npz`` that reloads, and fails with one
line and exit code 2 on bad input; a run killed with SIGKILL resumes with no lost steps and the
same losses as an uninterrupted run; two processes train with DistributedDataParallel on gloo.

Every run here uses the tiny preset with a random-initialised ``tiny`` text encoder and a few
optimiser steps, so the whole file takes about a minute on 2 CPU cores.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
FAST = ["--preset", "tiny", "--data", "builtin", "--text-encoder", "tiny", "--device", "cpu", "--no-progress"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(args: list[str], timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}")
    return proc


def _step_losses(log: Path, stage: str) -> dict[int, float]:
    """Training loss per step from a JSON-lines log (the last record wins: a resumed run redoes the
    steps after its last checkpoint)."""
    out: dict[int, float] = {}
    for line in log.read_text().splitlines():
        rec = json.loads(line)
        if rec.get("stage") == stage and "loss" in rec:
            out[int(rec["step"])] = float(rec["loss"])
    return out


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("e2e") / "run"
    _run(["-m", "train.full", *FAST, "--run", str(run), "--max-steps", "4", "--skip-eval"])
    return run


@pytest.mark.slow
def test_full_run_trains_saves_reloads_generates(trained_run):
    run = trained_run
    for stage in ("vae", "denoiser", "model"):
        assert (run / stage / "DONE").exists(), stage
    for stage in ("vae", "denoiser"):
        for which in ("latest", "best"):
            assert (run / stage / which / "config.json").exists(), (stage, which)
    assert (run / "loss.png").stat().st_size > 1000
    losses = _step_losses(run / "log.jsonl", "vae")
    assert sorted(losses) == [1, 2, 3, 4] and all(np.isfinite(list(losses.values())))

    from sald_fast import SignSALD

    model = SignSALD.load(run / "model")
    out = model.generate(["where is the library?", "thank you"], num_frames=20, steps=3, seed=0, progress=False)
    assert out.positions.shape == (2, 20, 44, 3)
    assert torch.isfinite(out.positions).all()
    assert out.smplx["left_hand_pose"].shape == (2, 20, 15, 3)
    again = SignSALD.load(run / "model").generate(["where is the library?", "thank you"], num_frames=20, steps=3,
                                                  seed=0, progress=False)
    torch.testing.assert_close(again.positions, out.positions, rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".mp4", ".gif"])
def test_cli_generate_writes_playable_animation_and_npz(trained_run, tmp_path, suffix):
    import imageio.v3 as iio

    out = tmp_path / f"where{suffix}"
    proc = _run(["-m", "sald_fast.cli", "generate", "where is the library?", "--checkpoint", str(trained_run),
                 "--out", str(out), "--steps", "2", "--frames", "12", "--quiet", "--device", "cpu"])
    assert str(out) in proc.stdout
    frames = iio.imread(out, index=None)
    assert frames.ndim == 4 and frames.shape[0] == 12 and frames.shape[-1] in (3, 4)
    assert frames.std() > 0  # something is drawn
    npz = np.load(out.with_suffix(".npz"), allow_pickle=False)
    assert str(npz["text"]) == "where is the library?"
    assert npz["joint_positions"].shape == (12, 44, 3)
    assert npz["left_hand_pose"].shape == (12, 15, 3) and npz["body_pose"].shape[0] == 12
    assert np.isfinite(npz["joint_positions"]).all()


@pytest.mark.slow
def test_cli_generate_pose_file_and_smplx_mesh(trained_run, tmp_path):
    """--out X.pose writes a pose-format file; --smplx-model renders the user's model's mesh."""
    from pose_format import Pose

    from _synthetic_smplx import write_synthetic_smplx

    out = tmp_path / "where.pose"
    _run(["-m", "sald_fast.cli", "generate", "where is the library?", "--checkpoint", str(trained_run),
          "--out", str(out), "--steps", "2", "--frames", "12", "--quiet", "--device", "cpu"])
    pose = Pose.read(out.read_bytes())
    assert pose.body.data.shape == (12, 1, 44, 3) and pose.body.fps == 25.0
    npz = np.load(out.with_suffix(".npz"), allow_pickle=False)
    assert npz["joint_positions"].shape == (12, 44, 3)

    import imageio.v3 as iio

    model_file = write_synthetic_smplx(tmp_path / "SMPLX_NEUTRAL.npz")
    mesh = tmp_path / "mesh.mp4"
    _run(["-m", "sald_fast.cli", "generate", "where is the library?", "--checkpoint", str(trained_run),
          "--out", str(mesh), "--steps", "2", "--frames", "12", "--quiet", "--device", "cpu",
          "--smplx-model", str(model_file)])
    frames = iio.imread(mesh, index=None)
    assert frames.shape[0] == 12 and frames.std() > 0


@pytest.mark.slow
def test_cli_errors_are_one_line_exit_2(trained_run, tmp_path):
    def fails(args: list[str], needle: str) -> None:
        proc = _run(["-m", "sald_fast.cli", *args], check=False)
        assert proc.returncode == 2, proc.stderr[-2000:]
        # torch's own log lines (glog format: e.g. a CUDA build of torch on a machine without the
        # CUDA runtime warns when the extension loads) are not ours
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not re.match(r"[IWE]\d{4} \d\d:", ln)]
        assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], proc.stderr

    out = str(tmp_path / "x.npz")
    fails(["generate", "hello", "--checkpoint", str(tmp_path / "nowhere"), "--out", out], "does not exist")
    fails(["generate", "   ", "--checkpoint", str(trained_run), "--out", out], "empty")
    fails(["generate", "hello", "--checkpoint", str(trained_run), "--out", str(tmp_path / "x.txt")], ".mp4")
    mp4 = str(tmp_path / "x.mp4")
    fails(["generate", "hello", "--checkpoint", str(trained_run), "--out", mp4, "--smplx-model",
           str(tmp_path / "SMPLX_MISSING.npz")], "SMPLX_MISSING.npz")
    from _synthetic_smplx import write_synthetic_smplx

    wrong = write_synthetic_smplx(tmp_path / "SMPL_WRONG.npz", posedirs=None)
    fails(["generate", "hello", "--checkpoint", str(trained_run), "--out", mp4, "--smplx-model", str(wrong)],
          "no field 'posedirs'")

    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained_run / "model", broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    fails(["generate", "hello", "--checkpoint", str(broken), "--out", out], "broken")

    other = tmp_path / "other"
    shutil.copytree(trained_run / "model", other)
    cfg_file = other / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["meta"]["skeleton_id"] = "some-other-skeleton"
    cfg_file.write_text(json.dumps(cfg))
    fails(["generate", "hello", "--checkpoint", str(other), "--out", out], "doc_sha256")  # an edit is corruption
    from sald_fast.checkpoint import doc_sha256

    cfg["doc_sha256"] = doc_sha256(cfg)  # an edit made on purpose, re-sealed: the skeleton check speaks
    cfg_file.write_text(json.dumps(cfg))
    fails(["generate", "hello", "--checkpoint", str(other), "--out", out], "skeleton")


@pytest.mark.slow
def test_sigkill_then_resume_loses_no_steps(tmp_path):
    steps = 24
    common = ["-m", "train.vae", *FAST, "--max-steps", str(steps), "--ckpt-every", "3"]
    _run([*common, "--run", str(tmp_path / "straight")])
    reference = _step_losses(tmp_path / "straight" / "log.jsonl", "vae")
    assert sorted(reference) == list(range(1, steps + 1))

    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, *common, "--run", str(run)], cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = run / "log.jsonl"
    deadline = time.time() + 300
    try:
        while time.time() < deadline and proc.poll() is None:
            if log.exists() and len(_step_losses(log, "vae")) >= 8:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    meta = json.loads((run / "vae" / "latest" / "config.json").read_text())["meta"]
    assert 3 <= meta["step"] < steps and meta["step"] % 3 == 0

    _run([*common, "--run", str(run), "--resume"])
    resumed = _step_losses(log, "vae")
    assert sorted(resumed) == list(range(1, steps + 1))  # no lost steps
    for step in range(1, steps + 1):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step
    final = json.loads((run / "vae" / "latest" / "config.json").read_text())["meta"]
    assert final["step"] == steps

    from sald_fast.checkpoint import load_checkpoint

    a, _, _ = load_checkpoint(run / "vae" / "latest")
    b, _, _ = load_checkpoint(tmp_path / "straight" / "vae" / "latest")
    for key in a:
        if key.startswith("model."):
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.slow
def test_two_process_gloo_training(tmp_path):
    run = tmp_path / "ddp"
    proc = _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "train.vae",
                 *FAST, "--run-dir", str(run), "--max-steps", "3"], timeout=600)
    assert proc.returncode == 0
    records = [json.loads(ln) for ln in (run / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r.get("stage") == "vae" and "loss" in r]
    assert steps == [1, 2, 3]  # only rank 0 writes the log
    meta = json.loads((run / "vae" / "latest" / "config.json").read_text())["meta"]
    assert meta["step"] == 3
    from sald_fast.checkpoint import load_checkpoint

    tensors, _, _ = load_checkpoint(run / "vae" / "best")
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())

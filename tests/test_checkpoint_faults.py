"""Fault injection: a save killed (SIGKILL) at every point leaves a loadable checkpoint, and a run
resumed from it ends with the weights of a run that was never interrupted.

A forked child does the save with every file-system step counted (file writes, fsync, link,
rename/replace, mkdir, unlink/rmdir, rmtree); at step ``k`` it kills itself with SIGKILL (a
file write is cut after half its bytes: a torn file). ``k`` runs from 1 until the child finishes
the save untouched, so every point of a save is covered.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

from sald_fast import checkpoint
from sald_fast.checkpoint import CheckpointError, load_newest_checkpoint, save_checkpoint
from sald_fast.config import preset

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "win32", reason="needs os.fork and SIGKILL")

# counted file-system steps: (module, attribute)
_STEPS = [(os, "replace"), (os, "rename"), (os, "link"), (os, "fsync"), (os, "mkdir"), (os, "unlink"), (os, "rmdir"),
          (shutil, "rmtree")]


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _arm(kill_at: int) -> Callable[[], None]:
    """In the child: count the steps and SIGKILL the process at step ``kill_at``; returns ``arm()``
    that starts the counting (steps before it are not counted)."""
    state = {"n": 0, "armed": False}

    def point() -> bool:
        if state["armed"]:
            state["n"] += 1
            return state["n"] == kill_at
        return False

    def wrap(fn):
        def wrapped(*args, **kwargs):
            if point():
                _die()
            return fn(*args, **kwargs)
        return wrapped

    for module, name in _STEPS:
        setattr(module, name, wrap(getattr(module, name)))
    write = checkpoint._write_file

    def torn_write(path, data):
        if point():
            with open(path, "wb") as f:  # half the bytes reach the file, then the process dies
                f.write(data[: len(data) // 2])
                f.flush()
            _die()
        return write(path, data)

    checkpoint._write_file = torn_write
    return lambda: state.update(armed=True)


def _in_child(kill_at: int, body: Callable[[Callable[[], None]], None]) -> bool:
    """Run ``body(arm)`` in a forked child killed at step ``kill_at``; True if it was killed, False
    if it finished (then there is no step ``kill_at``)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            body(_arm(kill_at))
        except BaseException:
            import traceback

            traceback.print_exc()
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        assert os.WTERMSIG(status) == signal.SIGKILL
        return True
    assert os.WEXITSTATUS(status) == 0, "the child failed before it was killed"
    return False


def _tensors(v: float) -> dict[str, torch.Tensor]:
    return {"w": torch.full((64, 33), v), "step": torch.tensor([int(v)])}


@pytest.mark.parametrize("first_save", [False, True])
def test_kill_at_every_point_of_a_save(tmp_path, first_save):
    """Killed anywhere in a save: the newest loadable pair is the old one or the new one, never a mix;
    on a first save, either nothing loads (no save completed) or the new one."""
    outcomes, k = [], 0
    while True:
        k += 1
        folder = tmp_path / f"k{k}"
        if not first_save:
            save_checkpoint(folder, _tensors(1.0), {"v": 1}, {"step": 1})

        def body(arm):
            arm()
            save_checkpoint(folder, _tensors(2.0), {"v": 2}, {"step": 2})

        if not _in_child(k, body):
            break
        try:
            tensors, config, meta, _, _ = load_newest_checkpoint(folder)
        except CheckpointError:
            assert first_save, f"killed at step {k}: nothing loads"
            assert not (folder / "config.json").exists()  # config.json is written last
            outcomes.append(0)
        else:
            v = config["v"]
            assert meta == {"step": v} and torch.equal(tensors["w"], _tensors(float(v))["w"]), f"step {k}: a mixed pair"
            outcomes.append(v)
        # the next save after a crash completes and cleans up what the killed one left
        save_checkpoint(folder, _tensors(3.0), {"v": 3}, {"step": 3})
        assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
        assert load_newest_checkpoint(folder)[1] == {"v": 3}
    points = k - 1
    assert points >= (8 if first_save else 14), points  # writes, fsyncs, links, renames, removals
    assert set(outcomes) == ({0, 2} if first_save else {1, 2}), outcomes
    print(f"\nsave_checkpoint ({'first save' if first_save else 'overwrite'}): killed at {points} points; "
          f"afterwards loaded the old pair {outcomes.count(1)}x, the new pair {outcomes.count(2)}x, "
          f"nothing (no save had completed) {outcomes.count(0)}x; mixed or unloadable: 0")


def _trainer(run_dir: Path, max_steps: int):
    from train.common import JsonlLogger, Trainer

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    data = [{"x": torch.randn(5, generator=g)} for _ in range(48)]
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Dropout(0.2), torch.nn.Linear(8, 1))
    return Trainer(stage="t", run_dir=run_dir, model=model,
                   loss_fn=lambda m, b: {"loss": (m(b) - b.sum(1, keepdim=True)).pow(2).mean()},
                   train_set=data, val_set=None, collate=lambda items: torch.stack([i["x"] for i in items]), epochs=2,
                   batch_size=4, lr=1e-2, ckpt_every=2, max_steps=max_steps, config=preset("tiny"), progress=False,
                   logger=JsonlLogger(run_dir / "log.jsonl"))


@pytest.mark.slow
def test_training_killed_in_a_save_resumes_to_the_same_weights(tmp_path):
    """A run killed at each point of its step-4 save resumes from step 4 or step 2 (logged) and
    finishes with exactly the weights of an uninterrupted run."""
    (tmp_path / "ref").mkdir()
    reference = _trainer(tmp_path / "ref", 6)
    reference.fit()
    want = {k: v.clone() for k, v in reference.model.state_dict().items()}
    resumed_from, k = [], 0
    while True:
        k += 1
        run = tmp_path / f"k{k}"
        run.mkdir()
        _trainer(run, 2).fit()  # latest at step 2

        def body(arm):
            from train.common import Trainer

            t = _trainer(run, 4)
            assert t.try_resume() and t.step == 2
            save = Trainer.save

            def save_armed(self, which="latest", val_loss=None):
                if which == "latest" and self.step == 4:
                    arm()
                return save(self, which, val_loss)

            Trainer.save = save_armed
            t.fit()

        if not _in_child(k, body):
            break
        t = _trainer(run, 6)
        assert t.try_resume()
        resumed_from.append(t.step)
        log = (run / "log.jsonl").read_text().splitlines()
        assert '"event": "resume"' in log[-1] and f'"step": {t.step}' in log[-1]
        t.fit()
        for name, value in t.model.state_dict().items():
            assert torch.equal(value, want[name]), f"killed at step {k}: {name} differs after resuming"
    assert k - 1 >= 14 and set(resumed_from) == {2, 4}, (k, resumed_from)
    print(f"\ntraining killed in its step-4 save at {k - 1} points: resumed from step 4 {resumed_from.count(4)}x, "
          f"from step 2 {resumed_from.count(2)}x; final weights equal to the uninterrupted run's every time")

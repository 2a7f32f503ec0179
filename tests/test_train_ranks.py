"""Per-rank random streams of the Trainer (train/rng.py): ranks draw different dropout masks and
per-sample noise keyed by (seed, step, dataset index); a 2-process gloo run with dropout off ends
with the weights of a 1-process run on the same global batch, both ranks identical after every
step; a resumed run repeats the same losses."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sald_fast.checkpoint import load_checkpoint
from sald_fast.config import preset
from train.common import Dist, JsonlLogger, Trainer
from train.rng import SampleRandom, step_seed

REPO = Path(__file__).resolve().parents[1]

# builds the same Trainer in the test process and in each rank of the gloo run
_SETUP = textwrap.dedent("""
    import torch
    from sald_fast.config import preset
    from train.common import Trainer

    def make_trainer(run_dir, dist_info, batch_size, dropout, logger, max_steps=6):
        torch.manual_seed(0)
        g = torch.Generator().manual_seed(1)
        data = [{"x": torch.randn(6, generator=g), "y": torch.randn(1, generator=g)} for _ in range(64)]
        model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Dropout(dropout),
                                    torch.nn.Linear(16, 1))
        drawn = []

        def loss_fn(m, batch):
            rng = batch["rng"]
            noise, t = rng.randn((6,)), rng.randint(10)
            drawn.append({"noise": noise.tolist(), "global": torch.rand(3).tolist()})
            pred = m(batch["x"] + 0.3 * noise)
            return {"loss": (pred - batch["y"] * (1 + t[:, None] / 10)).pow(2).mean()}

        collate = lambda items: {k: torch.stack([i[k] for i in items]) for k in items[0]}
        trainer = Trainer(stage="s", run_dir=run_dir, model=model, loss_fn=loss_fn, train_set=data, val_set=None,
                          collate=collate, epochs=2, batch_size=batch_size, lr=1e-2, max_steps=max_steps, ckpt_every=100,
                          seed=5, config=preset("tiny"), dist_info=dist_info, progress=False, logger=logger)
        return trainer, drawn
""")
exec(compile(_SETUP, "<setup>", "exec"))  # defines make_trainer here too

_RANK = _SETUP + textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch.distributed as dist
    from train.common import init_distributed

    class CheckRanks:
        \"\"\"Called after every optimiser step on every rank: all ranks hold the same weights.\"\"\"
        def __init__(self, trainer_ref):
            self.ref, self.losses, self.checked = trainer_ref, [], 0
        def log(self, **record):
            if "loss" not in record:
                return
            flat = torch.cat([p.detach().flatten() for p in self.ref[0].model.parameters()])
            both = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
            dist.all_gather(both, flat)
            assert all(torch.equal(both[0], b) for b in both), f"ranks differ after step {record['step']}"
            self.checked += 1
            self.losses.append(record["loss"])

    d = init_distributed("cpu")
    run = Path(sys.argv[1])
    ref = []
    logger = CheckRanks(ref)
    trainer, drawn = make_trainer(run, d, batch_size=4, dropout=0.0, logger=logger)
    ref.append(trainer)
    trainer.fit()
    (run / f"rank{d.rank}.json").write_text(json.dumps({"checked": logger.checked, "losses": logger.losses,
                                                          "first": drawn[0]}))
    dist.destroy_process_group()
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_ranks_match_one_process_on_the_same_global_batch(tmp_path):
    port = _free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port), PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
                   OMP_NUM_THREADS="1")
        procs.append(subprocess.Popen([sys.executable, "-c", _RANK, str(tmp_path)], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(outs)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["checked"] == ranks[1]["checked"] == 6  # identical weights after each of the 6 steps
    # ranks draw different per-sample noise (different samples) and different dropout streams
    assert ranks[0]["first"]["noise"] != ranks[1]["first"]["noise"]
    assert ranks[0]["first"]["global"] != ranks[1]["first"]["global"]

    # one process, batch 8 = the 2 x 4 global batch: the same samples, the same draws per sample
    (tmp_path / "one").mkdir()
    single, drawn = make_trainer(tmp_path / "one", Dist(), batch_size=8, dropout=0.0,
                                 logger=JsonlLogger(tmp_path / "one" / "log.jsonl"))
    single.fit()
    one_noise = drawn[0]["noise"]
    assert sorted(one_noise) == sorted(ranks[0]["first"]["noise"] + ranks[1]["first"]["noise"])
    two, _, meta = load_checkpoint(tmp_path / "s" / "latest")
    assert meta["step"] == 6
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(two[f"model.{name}"], value, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")
    losses = [json.loads(line)["loss"] for line in (tmp_path / "one" / "log.jsonl").read_text().splitlines()
              if '"loss"' in line]
    # the 1-process loss is the mean of the two ranks' (equal batch sizes); rank 0 logs its own
    assert len(losses) == 6 and ranks[0]["losses"] != ranks[1]["losses"]
    for one, r0, r1 in zip(losses, ranks[0]["losses"], ranks[1]["losses"]):
        assert abs(one - (r0 + r1) / 2) < 1e-5 * max(1.0, abs(one))


def test_resume_repeats_the_same_losses_with_dropout(tmp_path):
    """4 steps straight, or 2 steps + --resume + 2 steps: the same losses and weights (dropout on)."""
    logs = {}
    for name in ("straight", "resumed"):
        run = tmp_path / name
        run.mkdir()
        logger = JsonlLogger(run / "log.jsonl")
        if name == "resumed":
            make_trainer(run, Dist(), batch_size=4, dropout=0.3, logger=logger, max_steps=2)[0].fit()  # saves latest
        trainer, _ = make_trainer(run, Dist(), batch_size=4, dropout=0.3, logger=logger, max_steps=4)
        assert trainer.try_resume() == (name == "resumed")
        trainer.fit()
        logs[name] = ([json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()
                       if '"loss"' in line], trainer.model.state_dict())
    assert logs["straight"][0] == logs["resumed"][0] and len(logs["straight"][0]) == 4
    for k, v in logs["straight"][1].items():
        assert torch.equal(v, logs["resumed"][1][k]), k


def test_keyed_streams():
    """A sample's draws depend on (seed, step, index) only, not on its batch; the rank seeds differ."""
    a = SampleRandom(3, 7, [10, 11, 12]).randn((4,))
    b = SampleRandom(3, 7, [12, 99, 10]).randn((4,))
    assert torch.equal(a[0], b[2]) and torch.equal(a[2], b[0]) and not torch.equal(a[0], a[1])
    assert not torch.equal(a, SampleRandom(3, 8, [10, 11, 12]).randn((4,)))  # another step
    assert not torch.equal(a, SampleRandom(4, 7, [10, 11, 12]).randn((4,)))  # another seed
    r = SampleRandom(0, 0, [1, 2])
    t, u = r.randint(1000), r.rand()
    assert t.dtype == torch.int64 and t.shape == (2,) and u.shape == (2,) and ((u >= 0) & (u < 1)).all()
    assert len({step_seed(0, s, rank) for s in range(50) for rank in range(4)}) == 200

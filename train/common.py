"""Shared training machinery: arguments, distributed setup, resumable training loop.

A stage (VAE, denoiser) gives :class:`Trainer` a model, a loss function over a batch and a
dataset; the trainer owns the data order, the optimiser, checkpoints, logs and progress bars.

Resumability: the data order of epoch ``e`` is a permutation drawn from ``seed + e``; every
optimiser step ``s`` reseeds torch's RNG from ``(seed, s, rank)`` (dropout: ranks differ) and gives
a dict batch ``batch["rng"]``, a :class:`train.rng.SampleRandom` keyed by ``(seed, s, dataset
index)`` for the noise and timesteps of each sample, so a run resumed from its latest checkpoint
replays exactly the steps it had not done yet, and a sample draws the same numbers on any rank.
Checkpoints (``STAGE/latest``, ``STAGE/best``) are safetensors + JSON, saved crash-safe as a pair;
``--resume`` loads the newest complete one and logs which.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from sald_fast.checkpoint import (CONFIG_NAME, PREV_NAME, load_checkpoint, load_newest_checkpoint, save_checkpoint,
                                  strip_prefix)
from sald_fast.config import SALDConfig, preset

from .rng import SampleRandom, step_seed

__all__ = ["add_common_args", "config_from_args", "Dist", "init_distributed", "native_bf16", "Trainer", "JsonlLogger",
           "plot_losses", "resolve_device", "start_stage", "load_stage_model"]


def add_common_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--preset", default="tiny", choices=["tiny", "paper"], help="hyper-parameter preset")
    p.add_argument("--data", default="builtin", choices=["builtin", "how2sign"], help="dataset")
    p.add_argument("--data-root", default=None, help="How2Sign SMPL-X root folder (see sald_fast.data.how2sign)")
    # --run-dir first: under torchrun, "--run" is an ambiguous abbreviation of torchrun's --run-path
    p.add_argument("--run-dir", "--run", dest="run", default=None, help="run folder (default runs/<preset>-<data>)")
    p.add_argument("--compile", action="store_true", help="torch.compile the models")
    p.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoints")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--backend", default="auto", choices=["reference", "triton", "cuda", "auto"],
                   help="sald_fast.ops backend")
    p.add_argument("--max-steps", type=int, default=None, help="cap optimiser steps per stage")
    p.add_argument("--ckpt-every", type=int, default=None, help="save STAGE/latest every N optimiser steps")
    p.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every stage's epochs")
    p.add_argument("--text-encoder", default=None, choices=["minilm", "clip", "tiny"], help="override the text encoder")
    p.add_argument("--text-encoder-path", default=None, help="local model folder (CLIP)")
    p.add_argument("--skip-bad", action="store_true", help="skip bad data files (logged and counted)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-progress", action="store_true", help="disable progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> SALDConfig:
    """The run's config: the saved one when resuming, else the preset with overrides."""
    run = Path(args.run)
    saved = run / "config.json"
    if args.resume and saved.exists():
        return SALDConfig.from_dict(json.loads(saved.read_text()))
    cfg = preset(args.preset)
    if args.text_encoder:
        cfg.text.kind = args.text_encoder
    if args.text_encoder_path:
        cfg.text.path = args.text_encoder_path
    if args.seed is not None:
        cfg.train.seed = args.seed
    if args.max_steps is not None:
        cfg.train.max_steps = args.max_steps
    if args.ckpt_every is not None:
        if args.ckpt_every < 1:
            raise SystemExit(f"error: --ckpt-every must be >= 1, got {args.ckpt_every}")
        cfg.train.ckpt_every = args.ckpt_every
    if args.epochs_scale != 1.0:
        t = cfg.train
        t.vae_epochs = max(1, round(t.vae_epochs * args.epochs_scale))
        t.denoiser_epochs = max(1, round(t.denoiser_epochs * args.epochs_scale))
        t.evaluator_epochs = max(1, round(t.evaluator_epochs * args.epochs_scale))
    return cfg


def default_run_dir(args: argparse.Namespace) -> str:
    return args.run or os.path.join("runs", f"{args.preset}-{args.data}")


def resolve_device(name: str | None, local_rank: int = 0) -> torch.device:
    if name:
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def native_bf16(device: torch.device) -> bool:
    """Whether CUDA ``device`` computes in bf16 natively (compute capability >= 8.0, Ampere on):
    training uses bf16 autocast there; older GPUs emulate it slowly, and the Triton kernels'
    bf16 dots need sm_80, so they train in float32."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


@dataclass
class Dist:
    """Process-group facts; a single process when not launched by torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device_hint: str | None = None) -> Dist:
    """Join the torchrun process group (NCCL on GPUs, gloo on CPUs) if WORLD_SIZE > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device_hint is None or device_hint.startswith("cuda"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        torch.cuda.set_device(local)
    return Dist(rank=rank, world=world, local_rank=local)


class JsonlLogger:
    """Appends one JSON object per line (only on the main rank)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        if enabled:
            Path(path).parent.mkdir(parents=True, exist_ok=True)

    def log(self, **record: Any) -> None:
        if not self.enabled:
            return
        record.setdefault("time", round(time.time(), 3))
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


def start_stage(description: str, argv: list[str] | None) -> tuple[argparse.Namespace, Dist, torch.device]:
    """The start of a stage's ``main``: its command line (:func:`add_common_args`, the run folder
    defaulted by :func:`default_run_dir`), the process group and the device."""
    args = add_common_args(argparse.ArgumentParser(description=description)).parse_args(argv)
    args.run = default_run_dir(args)
    dist_info = init_distributed(args.device)
    return args, dist_info, resolve_device(args.device, dist_info.local_rank)


def load_stage_model(run_dir: Path, stage: str, which: str, build: Callable[[SALDConfig], torch.nn.Module]) -> torch.nn.Module:
    """The model of ``RUN/stage/which`` (e.g. ``vae/best``): ``build(config)`` with the checkpoint's
    ``model.`` weights loaded strictly."""
    tensors, config, _ = load_checkpoint(Path(run_dir) / stage / which)
    model = build(SALDConfig.from_dict(config))
    model.load_state_dict(strip_prefix(tensors, "model"), strict=True)
    return model


def plot_losses(log_path: Path, out_png: Path) -> None:
    """Loss curves per stage from the JSON-lines log, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[str, tuple[list[int], list[float]]] = {}
    val: dict[str, tuple[list[int], list[float]]] = {}
    if not log_path.exists():
        return
    for line in log_path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill: skip it
        if "stage" not in r or "step" not in r:
            continue
        if "loss" in r:
            series.setdefault(r["stage"], ([], []))[0].append(r["step"])
            series[r["stage"]][1].append(r["loss"])
        if "val_loss" in r:
            val.setdefault(r["stage"], ([], []))[0].append(r["step"])
            val[r["stage"]][1].append(r["val_loss"])
    if not series:
        return
    fig, axes = plt.subplots(1, len(series), figsize=(5 * len(series), 3.5), squeeze=False)
    for ax, (stage, (x, y)) in zip(axes[0], series.items()):
        ax.plot(x, y, lw=0.8, label="train")
        if stage in val:
            ax.plot(*val[stage], "o-", label="val")
        ax.set_title(stage)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.legend()
    fig.tight_layout()
    tmp = out_png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, out_png)


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Flatten an optimiser state_dict into tensors (safetensors) + JSON-able rest."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in meta["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


BUDGET_CALIBRATION_STEPS = 12  # steps timed before a time budget (Trainer.time_budget_s) fixes the step count
_clock = time.perf_counter  # the time budget's clock (a module global, so a test can replace it)


class Trainer:
    """A resumable training loop over epochs of a map-style dataset.

    Args:
        stage: name used for the checkpoint folder (RUN/stage) and the log.
        model: the module whose parameters are trained (its state_dict is checkpointed).
        loss_fn: ``loss_fn(model, batch) -> dict`` with a scalar ``"loss"`` (others logged); it gets
            the DistributedDataParallel wrapper (or the compiled module) while training, and a dict
            batch gets ``batch["rng"]``: a :class:`train.rng.SampleRandom` for its random draws.
        train_set / val_set: datasets; ``collate`` builds batches.
        epochs, batch_size, lr: schedule; ``max_steps`` caps optimiser steps.
        extra_state: ``() -> (tensors, meta)`` saved with every checkpoint (e.g. normaliser).
        val_loss_fn: the validation loss (default: ``loss_fn``).
        lr_schedule, warmup_steps: "constant" or "cosine" (to 10%), after a linear warm-up.
        ema_decay: > 0 keeps an exponential moving average of the weights (with the usual
            ``min(decay, (1 + step) / (10 + step))`` ramp); validation and the ``best`` checkpoint
            use it, ``latest`` stores both (``model.*`` raw, ``ema.*`` averaged).
        bucket_by_length: with a dataset that has ``lengths``, each epoch's random order is cut into
            chunks of 16 batches whose clips are sorted by length before batching (batch order then
            shuffled), so a collate that trims to the longest clip wastes little on padding.
        time_budget_s: a wall-clock budget for the stage's optimiser steps: after the first
            :data:`BUDGET_CALIBRATION_STEPS` steps (real training steps, still in the warm-up of the
            tiny preset) the stage is cut to the steps that fit in the budget at the measured speed
            of the steps after the first two (validation and checkpoints not counted). With length
            buckets a step's cost follows its batch's padded frames (batch size x longest clip), so
            the speed is measured per padded frame and turned into the mean step of an epoch;
            without, per step. The cut is saved with the checkpoints, so a resumed stage keeps it.
        log_every: optimiser steps between reads of the step metrics to the host. A step reads
            nothing back from the device: its scalar metrics stay there until every
            ``log_every`` steps, the end of an epoch, a checkpoint and the end of the stage, when
            they are read in one copy, checked (a non-finite loss raises ``FloatingPointError``
            naming its step, before any checkpoint is written after it) and logged a record per
            step, as before.
    """

    def __init__(self, *, stage: str, run_dir: Path, model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module, Any], dict],
                 train_set, val_set, collate: Callable, epochs: int, batch_size: int, lr: float,
                 weight_decay: float = 0.0, grad_clip: float | None = 1.0, max_steps: int | None = None,
                 ckpt_every: int = 200, seed: int = 0, config: SALDConfig, dist_info: Dist = Dist(),
                 device: torch.device = torch.device("cpu"), progress: bool = True,
                 extra_state: Callable[[], tuple[dict, dict]] | None = None,
                 logger: JsonlLogger | None = None, autocast: bool = False, compile: bool = False,
                 val_loss_fn: Callable[[torch.nn.Module, Any], dict] | None = None, lr_schedule: str = "constant",
                 warmup_steps: int = 0, ema_decay: float = 0.0, bucket_by_length: bool = False,
                 time_budget_s: float | None = None, log_every: int = 10):
        self.stage, self.run_dir, self.model = stage, Path(run_dir), model
        self.loss_fn, self.train_set, self.val_set, self.collate = loss_fn, train_set, val_set, collate
        self.val_loss_fn = val_loss_fn or loss_fn
        self.epochs, self.batch_size, self.seed = epochs, batch_size, seed
        self.grad_clip, self.ckpt_every, self.config = grad_clip, ckpt_every, config
        self.dist, self.device, self.progress = dist_info, device, progress
        if autocast and device.type == "cuda" and not native_bf16(device):
            if dist_info.main:
                print(f"{stage}: bf16 autocast off: {torch.cuda.get_device_name(device)} has no native bf16 "
                      f"(compute capability < 8.0); training in float32", flush=True)
            autocast = False
        self.extra_state, self.autocast = extra_state, autocast
        self.logger = logger or JsonlLogger(self.run_dir / "log.jsonl", dist_info.main)
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        self.base_lr, self.lr_schedule, self.warmup_steps = lr, lr_schedule, int(warmup_steps)
        self.bucket_by_length = bool(bucket_by_length) and hasattr(train_set, "lengths")
        self.ema_decay = float(ema_decay)
        self.ema: torch.nn.Module | None = None
        if self.ema_decay > 0:
            self.ema = copy.deepcopy(model).requires_grad_(False).eval()
        per_rank = math.ceil(len(train_set) / dist_info.world)
        self.steps_per_epoch = max(1, per_rank // batch_size)  # drop_last: equal batches on every rank
        total = self.steps_per_epoch * epochs
        self.total_steps = min(total, max_steps) if max_steps else total
        self.step = 0
        self.time_budget_s = None if time_budget_s is None else float(time_budget_s)
        if self.time_budget_s is not None and not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s must be > 0, got {time_budget_s}")
        self.budget_steps: int | None = None  # the steps the budget allows, once measured
        if int(log_every) < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        self.log_every = int(log_every)
        self.best_val = float("inf")
        self.train_model: torch.nn.Module = model
        if compile:
            # length buckets give batches of several lengths: compile for dynamic shapes at once
            # instead of a static graph first and a dynamic recompile at the second length
            self.train_model = torch.compile(model, dynamic=True if self.bucket_by_length else None)
        if dist_info.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [device.index] if device.type == "cuda" else None
            # find_unused_parameters: the CFG null token is unused in batches with no dropped text
            self.train_model = DDP(self.train_model, device_ids=ids, find_unused_parameters=True)

    def lr_at(self, step: int) -> float:
        """Learning rate of optimiser step ``step`` (0-based): a linear warm-up over
        ``warmup_steps``, then constant, or cosine from ``lr`` to 10% over the rest of the stage."""
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.lr_schedule == "constant":
            return self.base_lr * warm
        span = max(self.total_steps - self.warmup_steps - 1, 1)
        progress = min(max(step - self.warmup_steps, 0) / span, 1.0)
        return self.base_lr * warm * (0.1 + 0.45 * (1 + math.cos(math.pi * progress)))

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.ema_decay, (1.0 + self.step) / (10.0 + self.step))
        for e, p in zip(self.ema.parameters(), self.model.parameters()):
            e.lerp_(p.detach(), 1.0 - decay)
        for e, b in zip(self.ema.buffers(), self.model.buffers()):
            e.copy_(b)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights validation and the ``best`` checkpoint use: the EMA when on."""
        return self.ema if self.ema is not None else self.model

    # --- data order -------------------------------------------------------------------------
    def _epoch_batches(self, epoch: int) -> list[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        perm = torch.randperm(len(self.train_set), generator=g).tolist()
        mine = perm[self.dist.rank::self.dist.world]
        bs = self.batch_size
        batches = [mine[i * bs:(i + 1) * bs] for i in range(self.steps_per_epoch)]
        if self.bucket_by_length:
            from .data import length_buckets

            batches = length_buckets(batches, self.train_set.lengths, g)
        return batches

    def _batch(self, dataset, indices: list[int]):
        batch = self.collate([dataset[i] for i in indices])
        return _to_device(batch, self.device)

    # --- checkpoints -------------------------------------------------------------------------
    def _ckpt_dir(self, which: str) -> Path:
        return self.run_dir / self.stage / which

    def save(self, which: str = "latest", val_loss: float | None = None) -> None:
        if not self.dist.main:
            return
        weights = self.model if which == "latest" else self.eval_model
        tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in weights.state_dict().items()}
        meta: dict[str, Any] = {"stage": self.stage, "step": self.step, "total_steps": self.total_steps,
                                "best_val": _finite_or_none(self.best_val), "val_loss": _finite_or_none(val_loss),
                                "ema_decay": self.ema_decay, "budget_steps": self.budget_steps}
        if which == "latest":
            otensors, ometa = _optimizer_tensors(self.optimizer)
            tensors.update(otensors)
            meta["optimizer"] = ometa
            if self.ema is not None:
                tensors.update({f"ema.{k}": v.detach().cpu().contiguous() for k, v in self.ema.state_dict().items()})
        if self.extra_state is not None:
            et, em = self.extra_state()
            tensors.update({f"extra.{k}": v.detach().cpu().contiguous() for k, v in et.items()})
            meta["extra"] = em
        save_checkpoint(self._ckpt_dir(which), tensors, self.config.to_dict(), meta)

    def try_resume(self) -> bool:
        """Load the newest complete checkpoint of STAGE/latest (the folder's pair, else the previous
        pair a killed save kept) and log which one; True if something was loaded, False when no
        save ever completed. Raises CheckpointError when checkpoint files exist but none loads."""
        path = self._ckpt_dir("latest")
        if not (path / CONFIG_NAME).exists() and not (path / PREV_NAME).exists():
            return False  # config.json is written last: no save of this stage ever completed
        tensors, _, meta, used, skipped = load_newest_checkpoint(path)
        line = f"{self.stage}: resuming from {used} (step {int(meta['step'])})"
        if skipped:
            line += " after skipping the newer, incomplete one: " + "; ".join(skipped)
        if self.dist.main:
            tqdm.write(line)
        self.logger.log(stage=self.stage, event="resume", checkpoint=str(used), step=int(meta["step"]), skipped=skipped)
        model_sd = strip_prefix(tensors, "model")
        self.model.load_state_dict(model_sd, strict=True)
        if self.ema is not None:
            ema_sd = strip_prefix(tensors, "ema")
            self.ema.load_state_dict(ema_sd if ema_sd else model_sd, strict=True)
        self.optimizer.load_state_dict(_optimizer_state(tensors, meta["optimizer"]))
        self.step = int(meta["step"])
        self.best_val = float("inf") if meta.get("best_val") is None else float(meta["best_val"])
        if self.time_budget_s is not None and meta.get("budget_steps") is not None:
            self._apply_budget(int(meta["budget_steps"]))
        return True

    # --- time budget -------------------------------------------------------------------------
    def _apply_budget(self, steps: int) -> None:
        self.budget_steps = max(int(steps), min(self.step, self.total_steps), 1)
        self.total_steps = min(self.total_steps, self.budget_steps)

    def _batch_work(self, indices: list[int]) -> float:
        """Relative cost of a step on these dataset indices: its padded frames with length
        buckets (the collate trims to the longest clip), else 1."""
        if not self.bucket_by_length:
            return 1.0
        return float(len(indices) * max(int(self.train_set.lengths[i]) for i in indices))

    def _mean_batch_work(self) -> float:
        """Mean :meth:`_batch_work` over the steps of the first epoch."""
        batches = self._epoch_batches(0)
        return sum(self._batch_work(b) for b in batches) / max(len(batches), 1)

    def _measure_budget(self, seconds_per_step: float) -> None:
        allowed = int(self.time_budget_s / max(seconds_per_step, 1e-9))
        self._apply_budget(max(allowed, BUDGET_CALIBRATION_STEPS))
        if self.dist.world > 1:  # every rank must stop at the same step: take rank 0's count
            t = torch.tensor([self.budget_steps], device=self.device if self.device.type == "cuda" else "cpu")
            torch.distributed.broadcast(t, 0)
            self._apply_budget(int(t))
        self.logger.log(stage=self.stage, event="budget", budget_s=self.time_budget_s,
                        seconds_per_step=round(seconds_per_step, 5), total_steps=self.total_steps)
        if self.dist.main and self.progress:
            tqdm.write(f"{self.stage}: {seconds_per_step * 1e3:.0f} ms per step -> {self.total_steps} steps "
                       f"in the {self.time_budget_s / 60:.2f}-minute budget")

    # --- loop --------------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> float:
        if self.val_set is None or len(self.val_set) == 0:
            return float("nan")
        model = self.eval_model
        model.eval()
        total, count = 0.0, 0
        torch.manual_seed(self.seed + 7)
        order = list(range(len(self.val_set)))
        if self.bucket_by_length and hasattr(self.val_set, "lengths"):
            order.sort(key=lambda i: int(self.val_set.lengths[i]))
        for i in range(0, len(order), self.batch_size):
            batch = self._batch(self.val_set, order[i:i + self.batch_size])
            with self._autocast():
                out = self.val_loss_fn(model, batch)
            n = _batch_size(batch)
            total += float(out["loss"]) * n
            count += n
        self.model.train()
        return total / max(count, 1)

    def _flush_metrics(self, pending: list[tuple[int, int, dict[str, torch.Tensor]]], bar) -> dict[str, float]:
        """Read the metrics of the steps in ``pending`` to the host in one copy, raise on a
        non-finite loss, log a record per step; empties ``pending`` and returns the last step's."""
        if not pending:
            return {}
        flat = torch.stack([v.float() for _, _, m in pending for v in m.values()]).tolist()
        last: dict[str, float] = {}
        i = 0
        for step, epoch, metrics in pending:
            last = dict(zip(metrics, flat[i:i + len(metrics)]))
            i += len(metrics)
            if not math.isfinite(last["loss"]):
                pending.clear()
                raise FloatingPointError(f"{self.stage}: loss is {last['loss']} at step {step}")
            self.logger.log(stage=self.stage, step=step + 1, epoch=epoch, **last)
        pending.clear()
        bar.set_postfix(loss=f"{last['loss']:.4g}")
        return last

    def _wait_for_device(self) -> None:
        """Wait for the queued device work (the time budget's clock reads, twice a stage)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _autocast(self):
        if self.autocast and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def fit(self) -> dict[str, float]:
        """Run until ``total_steps`` optimiser steps are done (resuming from ``self.step``)."""
        self.model.train()
        bar = tqdm(total=self.total_steps, initial=self.step, desc=self.stage, disable=not (self.progress and self.dist.main),
                   dynamic_ncols=True)
        last: dict[str, float] = {}
        measuring = self.time_budget_s is not None and self.budget_steps is None
        clock_start, work_done = None, 0.0
        pending: list[tuple[int, int, dict[str, torch.Tensor]]] = []  # (step, epoch, metrics) not yet read
        while self.step < self.total_steps:
            epoch, offset = divmod(self.step, self.steps_per_epoch)
            if hasattr(self.train_set, "set_epoch"):
                self.train_set.set_epoch(epoch)
            batches = self._epoch_batches(epoch)
            for b in range(offset, self.steps_per_epoch):
                if self.step >= self.total_steps:
                    break
                torch.manual_seed(step_seed(self.seed, self.step, self.dist.rank))  # dropout: differs per rank
                batch = self._batch(self.train_set, batches[b])
                if isinstance(batch, dict):  # noise, timesteps: keyed per sample, the same under any world size
                    batch["rng"] = SampleRandom(self.seed, self.step, batches[b], self.device)
                with self._autocast():
                    out = self.loss_fn(self.train_model, batch)
                loss = out["loss"]
                # kept on the device; read, checked and logged by _flush_metrics
                pending.append((self.step, epoch, {k: v.detach() for k, v in out.items()
                                                   if isinstance(v, torch.Tensor) and v.numel() == 1}))
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                for group in self.optimizer.param_groups:  # a function of the step: resumes exactly
                    group["lr"] = self.lr_at(self.step)
                if self.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
                self.optimizer.step()
                self.step += 1
                if self.ema is not None:
                    self._update_ema()
                bar.update(1)
                if measuring:
                    if self.step == 2 or clock_start is None:
                        self._wait_for_device()
                        clock_start, work_done = (self.step, _clock()), 0.0
                    else:
                        work_done += self._batch_work(batches[b])
                        if self.step >= BUDGET_CALIBRATION_STEPS:
                            measuring = False
                            self._wait_for_device()
                            per_work = (_clock() - clock_start[1]) / max(work_done, 1e-9)
                            self._measure_budget(per_work * self._mean_batch_work())
                        bar.total = self.total_steps
                        bar.refresh()
                end_of_epoch = b == self.steps_per_epoch - 1 or self.step == self.total_steps
                checkpoint = end_of_epoch or self.step % self.ckpt_every == 0
                if checkpoint or len(pending) >= self.log_every:
                    last = self._flush_metrics(pending, bar) or last
                if end_of_epoch:
                    val = self.validate()
                    self.logger.log(stage=self.stage, step=self.step, epoch=epoch, val_loss=val)
                    if val < self.best_val:
                        self.best_val = val
                        self.save("best", val_loss=val)
                if checkpoint:
                    self.save("latest")
                    self.dist.barrier()
        last = self._flush_metrics(pending, bar) or last
        bar.close()
        if not (self._ckpt_dir("best") / "config.json").exists():
            self.save("best")
        return last


def _finite_or_none(x: float | None) -> float | None:
    """JSON has no inf/nan: a value not yet known (no validation run) is stored as null."""
    return float(x) if x is not None and math.isfinite(x) else None


def _batch_size(batch) -> int:
    if isinstance(batch, torch.Tensor):
        return batch.shape[0]
    for v in batch.values():
        if isinstance(v, torch.Tensor):
            return v.shape[0]
        if isinstance(v, list):
            return len(v)
    return 1


def _to_device(batch, device: torch.device):
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    return batch

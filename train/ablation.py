"""The paper's Table 3: train every ablation variant on the same data with the same seed and budget,
score them all with one set of evaluation models, and write the table.

    python -m train.ablation                                   # tiny preset, built-in corpus, every variant
    python -m train.ablation --variants full,no_cross_attn --budget-minutes 4
    python -m train.ablation --preset paper --data how2sign --data-root DIR --evaluator runs/evaluator-how2sign

Variants (``sald_fast.config.VARIANTS``): ``full``, ``no_st_latent``, ``no_cross_attn``,
``no_temporal_attn``, ``no_skeletal_attn``, ``atoms5``, ``atoms9`` (J' = 7 is ``full``) and
``no_st_latent_cross_attn``. ``--budget-minutes M`` gives every variant M minutes of optimiser
steps, ``--vae-share`` of them to the VAE and the rest to the denoiser: each stage times its first
steps and stops after the steps that fit (the preset's epochs no longer decide). Without it the
preset's epochs decide. Variants whose VAE is the same (``full``, ``no_cross_attn``,
``no_temporal_attn``, ``no_skeletal_attn``; the two ``no_st_latent`` ones) share one trained VAE,
copied into each variant's folder.

Layout of the run folder (default ``runs/ablation-<preset>-<data>``): ``evaluator/`` (unless
``--evaluator DIR``), one folder per variant (a ``train.full`` run folder: ``vae/``,
``denoiser/``, ``model/``, ``eval.json``, ``ablation.json``), and ``table3.md`` / ``table3.json``.
Running the command again continues: a variant with its ``ablation.json`` is not trained again,
an interrupted one resumes from its latest checkpoints.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from sald_fast.config import VARIANT_LABELS, VARIANTS, SALDConfig, apply_variant, variant_difference, variant_fields
from sald_fast.text import TextEncoder, build_text_encoder

from .common import Dist, JsonlLogger, add_common_args, config_from_args, resolve_device

__all__ = ["main", "train_variant", "format_table3", "PAPER_TABLE3", "TABLE_ORDER"]

TABLE_ORDER = ("no_st_latent", "no_cross_attn", "no_temporal_attn", "no_skeletal_attn", "atoms5", "atoms9",
               "no_st_latent_cross_attn", "full")
"""Row order of Table 3 (the paper's, with J' = 5 / 9 on rows of their own)."""

PAPER_TABLE3 = {"no_st_latent": (13.07, 2.76), "no_cross_attn": (12.50, 3.18), "no_temporal_attn": (13.61, 3.29),
                "no_skeletal_attn": (13.72, 2.45), "atoms5": (13.11, 2.45), "atoms9": (12.43, 1.29),
                "no_st_latent_cross_attn": (12.08, 3.65), "full": (13.79, 1.32)}
"""The paper's Table 3 (How2Sign): variant -> (BLEU-4, FID)."""

_EPOCHS_UNDER_BUDGET = 10_000  # with a budget the stages run until it is spent, not for the preset's epochs


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _variant_config(base: SALDConfig, name: str, budget_minutes: float | None, vae_share: float) -> SALDConfig:
    cfg = apply_variant(base, name)
    if budget_minutes is not None:
        t = cfg.train
        t.vae_budget_minutes = budget_minutes * vae_share
        t.denoiser_budget_minutes = budget_minutes * (1.0 - vae_share)
        t.vae_epochs = t.denoiser_epochs = _EPOCHS_UNDER_BUDGET
    return cfg


def _vae_key(cfg: SALDConfig) -> str:
    """What makes two variants' VAEs the same: the VAE config and the training settings it uses."""
    t = cfg.train
    return json.dumps({"vae": cfg.to_dict()["vae"], "train": {k: getattr(t, k) for k in (
        "vae_epochs", "vae_batch", "lr", "vae_lr", "lr_schedule", "vae_lr_schedule", "warmup_steps", "weight_decay",
        "grad_clip", "num_frames", "max_steps", "vae_budget_minutes", "bucket_by_length", "seed")}}, sort_keys=True)


def _log_record(line: str) -> dict:
    """One JSON-lines record ({} for a line cut by a kill)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return {}


def _check_run_folder(run: Path, cfg: SALDConfig, name: str) -> None:
    """A variant's folder from an earlier run must hold the same variant (else a clear error)."""
    saved = run / "config.json"
    if not saved.exists():
        return
    old = SALDConfig.from_dict(json.loads(saved.read_text()))
    diff = variant_difference(old, cfg)
    if diff:
        raise SystemExit(f"error: {run} holds another variant than {name!r} ({diff}, saved vs asked); "
                         f"remove it or choose another --run")
    if old.to_dict() != cfg.to_dict():
        raise SystemExit(f"error: {run} was trained with another config than this command gives variant {name!r} "
                         f"(other preset, budget or options); remove it or choose another --run")


def _stage_step_time(run: Path, stage: str) -> tuple[float | None, int | None]:
    """(seconds per optimiser step, steps) of a stage from the run's log: the budget's measurement
    when there is one, else the stage's wall time over its steps."""
    log = run / "log.jsonl"
    if not log.exists():
        return None, None
    budget, steps, times = None, 0, []
    for line in log.read_text().splitlines():
        r = _log_record(line)
        if r.get("stage") != stage:
            continue
        if r.get("event") == "budget":
            budget = float(r["seconds_per_step"])
        elif "loss" in r and "step" in r:
            steps = max(steps, int(r["step"]))
            if "time" in r:
                times.append(float(r["time"]))
    if budget is None and len(times) > 2:
        budget = (times[-1] - times[0]) / (len(times) - 1)
    return budget, steps or None


def _sampling_latency(model, text: str, num_frames: int, repeats: int = 3) -> float:
    """Median seconds of ``model.generate`` for one sentence (after one warm-up call)."""
    model.generate([text], num_frames=num_frames, seed=0)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.generate([text], num_frames=num_frames, seed=0)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train_variant(name: str, cfg: SALDConfig, run: Path, args: argparse.Namespace, device: torch.device,
                  evaluator_dir: Path, shared_vae: dict[str, Path], text_encoder: TextEncoder) -> dict:
    """Train (or resume) variant ``name`` in folder ``run``, evaluate it with ``evaluator_dir``
    and return its row (also written to ``run/ablation.json``). ``shared_vae``: VAE key -> the
    folder whose finished ``vae/`` a variant with the same VAE copies instead of training.
    ``text_encoder``: built from ``cfg.text`` and shared by every variant (its feature cache
    too); ``cfg.denoiser.text_dim`` must already be its dim."""
    from sald_fast.eval import evaluate_run
    from sald_fast.pipeline import SignSALD

    from .denoiser import train_denoiser
    from .full import _done, _mark_done, fit_duration
    from .vae import load_vae, train_vae

    _check_run_folder(run, cfg, name)
    run.mkdir(parents=True, exist_ok=True)
    _write_json(run / "config.json", cfg.to_dict())
    log = JsonlLogger(run / "log.jsonl", True)
    stage_args = argparse.Namespace(**{**vars(args), "run": str(run), "resume": True})
    timings = json.loads((run / "timings.json").read_text()) if (run / "timings.json").exists() else {}
    key = _vae_key(cfg)
    vae_from = None
    t0 = time.time()
    if not _done(run, "vae"):
        source = shared_vae.get(key)
        if source is not None and _done(source, "vae"):
            copy = run / "vae.copy"  # copied whole, then renamed: a kill leaves no half VAE marked done
            shutil.rmtree(copy, ignore_errors=True)
            shutil.rmtree(run / "vae", ignore_errors=True)
            shutil.copytree(source / "vae", copy)
            (copy / "FROM").write_text(source.name + "\n")
            with open(run / "log.jsonl", "a") as f:  # its step times, for the table (repeats are harmless)
                for line in (source / "log.jsonl").read_text().splitlines():
                    if _log_record(line).get("stage") == "vae":
                        f.write(line + "\n")
            os.replace(copy, run / "vae")
            vae_from = source.name
            timings["vae"] = json.loads((source / "timings.json").read_text()).get("vae")
        else:
            train_vae(cfg, stage_args, run, Dist(), device)
            _mark_done(run, "vae", Dist(), seconds=round(time.time() - t0, 1))
            timings["vae"] = round(time.time() - t0, 1)
        _write_json(run / "timings.json", timings)
    shared_vae.setdefault(key, run)
    vae = load_vae(run, device, backend=args.backend)
    if not _done(run, "denoiser"):
        t0 = time.time()
        train_denoiser(cfg, stage_args, run, Dist(), device, vae=vae, text_encoder=text_encoder)
        _mark_done(run, "denoiser", Dist())
        timings["denoiser"] = round(time.time() - t0, 1)
        _write_json(run / "timings.json", timings)
    if not (run / "model" / "config.json").exists() or not _done(run, "model"):
        from sald_fast.checkpoint import load_checkpoint

        from .denoiser import load_denoiser

        denoiser = load_denoiser(run, device, backend=args.backend)
        tensors, _, _ = load_checkpoint(run / "denoiser" / "best")
        vae.latent_scale.copy_(tensors["extra.latent_scale"])
        model = SignSALD(cfg, vae.to(device).eval(), denoiser.to(device).eval(), text_encoder)
        if cfg.train.duration_model:
            fit_duration(model, stage_args, log, verbose=False)
        model.save(run / "model", {"variant": name, "variant_fields": variant_fields(cfg)})
        _mark_done(run, "model", Dist())
    model = SignSALD.load(run / "model", device=device, text_encoder=text_encoder, backend=args.backend)
    if not (run / "eval.json").exists():
        evaluate_run(run, evaluator_dir=evaluator_dir, device=device, progress=not args.no_progress,
                     num_samples=args.num_samples)
    rows = json.loads((run / "eval.json").read_text())["rows"]
    frames = cfg.train.num_frames
    latency = _sampling_latency(model, "where is the library", frames)
    vae_step, vae_steps = _stage_step_time(run, "vae")
    den_step, den_steps = _stage_step_time(run, "denoiser")
    row = {"variant": name, "label": VARIANT_LABELS[name], "variant_fields": variant_fields(cfg),
           "sign_sald": rows["Sign-SALD"], "vae_reconstruction": rows.get("VAE reconstruction"),
           "parameters": {"vae": model.vae.num_parameters(), "denoiser": sum(p.numel() for p in model.denoiser.parameters())},
           "vae_steps": vae_steps, "denoiser_steps": den_steps,
           "vae_seconds_per_step": vae_step, "denoiser_seconds_per_step": den_step,
           "sampling_seconds": latency, "sampling_frames": frames, "sampling_steps": cfg.diffusion.sample_steps,
           "train_seconds": timings,
           "vae_from": vae_from or ((run / "vae" / "FROM").read_text().strip() if (run / "vae" / "FROM").exists() else None)}
    _write_json(run / "ablation.json", row)
    return row


def format_table3(rows: list[dict], settings: dict) -> str:
    """Markdown Table 3: the four metrics, parameters, step times and sampling latency per
    variant, with the paper's BLEU-4 / FID beside them."""
    head = ("| Methods | BLEU-4 ↑ | ROUGE ↑ | FID ↓ | MPJPE (mm) ↓ | VAE recon. FID ↓ | params (M) | VAE steps | "
            "denoiser steps | denoiser ms/step | sampling ms | paper BLEU-4 | paper FID |")
    lines = [head, "| --- |" + " ---: |" * 12]
    for r in rows:
        s, v = r["sign_sald"], r.get("vae_reconstruction") or {}
        paper = PAPER_TABLE3.get(r["variant"], (None, None))
        params = (r["parameters"]["vae"] + r["parameters"]["denoiser"]) / 1e6
        den = r.get("denoiser_seconds_per_step")
        cells = [r["label"], f"{s['BLEU-4']:.2f}", f"{s['ROUGE-L']:.2f}", f"{s['FID']:.2f}", f"{s['MPJPE']:.2f}",
                 f"{v['FID']:.2f}" if "FID" in v else "-", f"{params:.3f}", str(r.get("vae_steps") or "-"),
                 str(r.get("denoiser_steps") or "-"), f"{den * 1e3:.0f}" if den else "-",
                 f"{r['sampling_seconds'] * 1e3:.0f}",
                 f"{paper[0]:.2f}" if paper[0] is not None else "-", f"{paper[1]:.2f}" if paper[1] is not None else "-"]
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"{settings['preset']} preset, {settings['data']} data, seed {settings['seed']}; budget: "
            + (f"{settings['budget_minutes']} min of optimiser steps per variant ({settings['vae_share']:.0%} VAE)"
               if settings["budget_minutes"] is not None else "the preset's epochs")
            + f"; evaluation: {settings['evaluator']}; sampling: one sentence of {rows[0]['sampling_frames']} frames, "
              f"{rows[0]['sampling_steps']} DDIM steps with guidance, on {settings['device']}. Paper columns: How2Sign.")
    return "\n".join(lines) + "\n\n" + note


def main(argv: list[str] | None = None) -> int:
    """``python -m train.ablation``: train, score and tabulate the variants (see the module docstring)."""
    p = add_common_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--variants", default=",".join(TABLE_ORDER),
                   help=f"comma-separated variants (default: all): {', '.join(VARIANTS)}")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="minutes of optimiser steps per variant, VAE and denoiser together (default: the preset's epochs)")
    p.add_argument("--vae-share", type=float, default=0.5, help="share of the budget for the VAE (default 0.5)")
    p.add_argument("--evaluator", default=None, help="evaluation models to score every variant with (a train.evaluator "
                   "folder; default: trained once into RUN/evaluator)")
    p.add_argument("--num-samples", type=int, default=None, help="test sentences to score (default: all)")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        p.error(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    if args.budget_minutes is not None and not args.budget_minutes > 0:
        p.error(f"--budget-minutes must be > 0, got {args.budget_minutes}")
    if not 0.0 < args.vae_share < 1.0:
        p.error(f"--vae-share must lie in (0, 1), got {args.vae_share}")
    if args.data == "how2sign" and not args.data_root:
        p.error("--data how2sign needs --data-root DIR")
    root = Path(args.run or os.path.join("runs", f"ablation-{args.preset}-{args.data}"))
    root.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    torch.set_float32_matmul_precision("high")
    from sald_fast.cli import print_backend_line

    print_backend_line(device, args.backend)
    base = config_from_args(argparse.Namespace(**{**vars(args), "run": str(root), "resume": False}))
    text_encoder = build_text_encoder(base.text)  # one encoder (and text-feature cache) for every variant
    base.denoiser.text_dim = text_encoder.dim

    evaluator_dir = Path(args.evaluator) if args.evaluator else root / "evaluator"
    if args.evaluator is None and not (evaluator_dir / "DONE").exists():
        from .evaluator import train_evaluator

        train_evaluator(base, args, evaluator_dir, device=device, progress=not args.no_progress)
        (evaluator_dir / "DONE").write_text("{}")
    shared_vae: dict[str, Path] = {}
    for name in VARIANTS:  # finished VAEs of earlier runs are shared too
        folder = root / name
        if (folder / "vae" / "DONE").exists() and (folder / "config.json").exists():
            shared_vae.setdefault(_vae_key(SALDConfig.from_dict(json.loads((folder / "config.json").read_text()))), folder)
    order = sorted(names, key=lambda n: (TABLE_ORDER.index(n) if n in TABLE_ORDER else len(TABLE_ORDER)))
    # train the variants that own a VAE before those that can share it
    rows = {}
    for name in sorted(order, key=lambda n: n not in ("full", "no_st_latent", "atoms5", "atoms9")):
        cfg = _variant_config(base, name, args.budget_minutes, args.vae_share)
        print(f"== variant {name} ({VARIANT_LABELS[name]})", flush=True)
        rows[name] = train_variant(name, cfg, root / name, args, device, evaluator_dir, shared_vae, text_encoder)
    settings = {"preset": args.preset, "data": args.data, "seed": base.train.seed, "budget_minutes": args.budget_minutes,
                "vae_share": args.vae_share, "evaluator": str(evaluator_dir), "device": str(device),
                "num_samples": args.num_samples}
    table = format_table3([rows[n] for n in order], settings)
    _write_json(root / "table3.json", {"settings": settings, "rows": [rows[n] for n in order]})
    tmp = root / "table3.md.tmp"
    tmp.write_text("# Table 3 (ablations)\n\n" + table + "\n")
    os.replace(tmp, root / "table3.md")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The main job: VAE -> denoiser -> evaluation models -> samples -> evaluation table.

    python -m train.full                               # tiny preset, built-in corpus, CPU: minutes
    python -m train.full --compile --preset paper --data how2sign --data-root DIR
    torchrun --nproc_per_node=8 -m train.full --preset paper --data how2sign --data-root DIR

Everything lands in the run folder (default ``runs/<preset>-<data>``): ``config.json``,
``vae/`` and ``denoiser/`` checkpoints (``latest`` and ``best``), ``model/`` (the final
SignSALD checkpoint for ``sald-fast generate``), ``evaluator/``, ``samples/``, ``log.jsonl``,
``loss.png``, ``eval.md`` / ``eval.json``. ``--resume`` skips finished stages and continues the
interrupted one from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import torch

from sald_fast.text import build_text_encoder

from .common import Dist, JsonlLogger, add_common_args, config_from_args, default_run_dir, init_distributed, plot_losses, resolve_device

__all__ = ["main", "SAMPLE_TEXTS", "StageClock"]

SAMPLE_TEXTS = 4  # test sentences rendered as side-by-side videos at the end


class StageClock:
    """Wall seconds per stage of the main job: ``with clock("vae"): ...``; :meth:`summary` is the
    one line printed at the end (also kept in ``RUN/timings.json`` and the log)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._open: tuple[str, float] | None = None

    def start(self, stage: str) -> None:
        """Start timing ``stage`` (stopping the one that runs)."""
        self.stop()
        self._open = (stage, time.time())

    def stop(self) -> None:
        """Stop timing the running stage, if any."""
        if self._open is not None:
            stage, t0 = self._open
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.time() - t0
            self._open = None

    @contextlib.contextmanager
    def __call__(self, stage: str):
        self.start(stage)
        try:
            yield
        finally:
            self.stop()

    def summary(self) -> str:
        """``time per stage: setup 12 s | vae 180 s | ... | total 600 s``."""
        parts = [f"{k} {v:.0f} s" for k, v in self.seconds.items()]
        return "time per stage: " + " | ".join(parts) + f" | total {sum(self.seconds.values()):.0f} s"

    def write(self, run: Path) -> None:
        tmp = run / "timings.json.tmp"
        tmp.write_text(json.dumps({k: round(v, 1) for k, v in self.seconds.items()}, indent=2) + "\n")
        os.replace(tmp, run / "timings.json")


def _done(run: Path, stage: str) -> bool:
    return (run / stage / "DONE").exists()


def _mark_done(run: Path, stage: str, dist_info: Dist, **info) -> None:
    if dist_info.main:
        (run / stage).mkdir(parents=True, exist_ok=True)
        tmp = run / stage / "DONE.tmp"
        tmp.write_text(json.dumps(info))
        os.replace(tmp, run / stage / "DONE")
    dist_info.barrier()


def _write_samples(model, run: Path, clips: list[dict], num_frames: int, progress: bool) -> list[Path]:
    """Side-by-side videos (ground truth | generated | VAE reconstruction, the sentence as the
    title) of test ``clips``, each as long as its reference signing (at most ``num_frames``),
    and the generated poses as ``.npz``."""
    import numpy as np

    from sald_fast.eval.evaluate import reference_poses, vae_reconstruct
    from sald_fast.render import save_side_by_side

    out_dir = run / "samples"
    out_dir.mkdir(parents=True, exist_ok=True)
    ref_pos, lengths, texts, feats = reference_poses(clips, num_frames, device=model.device, progress=False,
                                                     with_features=True)
    lengths = [int(n) for n in lengths]
    result = model.generate(texts, num_frames=max(lengths), seed=0, progress=progress, lengths=lengths)
    with torch.no_grad():
        model.vae.eval()
        recon = vae_reconstruct(model.vae, feats, progress=False)
    written = []
    fps = float(model.config.train.fps)
    for i, text in enumerate(texts):
        n = lengths[i]
        stem = f"sample_{i:02d}"
        arrays = {k: np.asarray(v[i][:n]) for k, v in result.smplx.items()}
        arrays["joint_positions"] = result.positions[i][:n].detach().cpu().numpy()
        np.savez(out_dir / f"{stem}.npz", text=np.array(text), fps=np.array(fps), **arrays)
        columns = [("ground truth", ref_pos[i, :n].numpy()), ("generated", arrays["joint_positions"]),
                   ("VAE reconstruction", recon[i, :n].numpy())]
        written.append(save_side_by_side(columns, out_dir / f"{stem}.mp4", fps=fps, title=text))
    return written


def fit_duration(model, args, log, verbose: bool = True) -> None:
    """Fit ``model.duration`` (:class:`sald_fast.duration.DurationModel`) on the training
    sentences' lengths and log its validation fit (Pearson r, mean absolute error in frames)."""
    import numpy as np

    from sald_fast.duration import DurationModel
    from train.data import load_split_clips

    t0 = time.time()
    train = load_split_clips(args.data, args.data_root, args.skip_bad, "train")
    model.duration = DurationModel.fit(model.text_encoder, [c["text"] for c in train],
                                       [len(c["global_orient"]) for c in train]).to(model.device)
    val = load_split_clips(args.data, args.data_root, args.skip_bad, "val")
    pred = model.predict_num_frames([c["text"] for c in val]).double().numpy()
    true = np.array([len(c["global_orient"]) for c in val], dtype=np.float64)
    r = float(np.corrcoef(pred, true)[0, 1]) if len(val) > 1 and pred.std() > 0 else float("nan")
    mae = float(np.abs(pred - true).mean())
    seconds = time.time() - t0
    log.log(event="duration_model", val_pearson_r=round(r, 4), val_mae_frames=round(mae, 2), seconds=round(seconds, 1))
    if verbose:
        print(f"duration model: validation r {r:.3f}, mean abs error {mae:.1f} frames ({seconds:.1f} s)")


def main(argv: list[str] | None = None) -> int:
    p = add_common_args(argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))
    p.add_argument("--evaluator", default=None,
                   help="reuse these evaluation models (a folder from train.evaluator) instead of training RUN/evaluator")
    p.add_argument("--skip-eval", action="store_true", help="stop after training (no evaluator, samples, table)")
    args = p.parse_args(argv)
    args.run = default_run_dir(args)
    if args.data == "how2sign" and not args.data_root:
        p.error("--data how2sign needs --data-root DIR (see sald_fast/data/how2sign.py for the layout)")
    start = time.time()
    clock = StageClock()
    clock.start("setup")
    dist_info = init_distributed(args.device)
    device = resolve_device(args.device, dist_info.local_rank)
    if dist_info.main:  # which implementation each op runs; fallback notices reach stderr
        from sald_fast.cli import print_backend_line

        print_backend_line(device, args.backend)
    torch.set_float32_matmul_precision("high")
    run = Path(args.run)
    cfg = config_from_args(args)
    text_encoder = build_text_encoder(cfg.text)
    cfg.denoiser.text_dim = text_encoder.dim
    if dist_info.main:
        run.mkdir(parents=True, exist_ok=True)
        if not (args.resume and (run / "config.json").exists()):
            (run / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
            (run / "log.jsonl").unlink(missing_ok=True)
            for stage in ("vae", "denoiser", "evaluator", "model"):
                (run / stage / "DONE").unlink(missing_ok=True)
    dist_info.barrier()
    log = JsonlLogger(run / "log.jsonl", dist_info.main)
    log.log(event="start", argv=sys.argv[1:] if argv is None else argv, device=str(device), world=dist_info.world)

    from .denoiser import load_denoiser, train_denoiser
    from .vae import load_vae, train_vae

    clock.stop()
    with clock("vae"):
        if _done(run, "vae"):
            vae = load_vae(run, device, backend=args.backend)
        else:
            vae = train_vae(cfg, args, run, dist_info, device)
            _mark_done(run, "vae", dist_info)
    clock.start("denoiser")
    if _done(run, "denoiser"):
        denoiser = load_denoiser(run, device, backend=args.backend)
        from sald_fast.checkpoint import load_checkpoint

        tensors, _, _ = load_checkpoint(run / "denoiser" / "best")
        vae.latent_scale.copy_(tensors["extra.latent_scale"])
    else:
        denoiser = train_denoiser(cfg, args, run, dist_info, device, vae=vae, text_encoder=text_encoder)
        _mark_done(run, "denoiser", dist_info)
    clock.stop()
    if dist_info.main:
        plot_losses(run / "log.jsonl", run / "loss.png")

    from sald_fast.pipeline import SignSALD

    model = SignSALD(cfg, vae.to(device).eval(), denoiser.to(device).eval(), text_encoder)
    if cfg.train.duration_model:
        fit_duration(model, args, log, dist_info.main)
    if dist_info.main:
        model.save(run / "model")
    _mark_done(run, "model", dist_info)
    if args.skip_eval or not dist_info.main:
        log.log(event="end", seconds=round(time.time() - start, 1))
        return 0

    from sald_fast.eval import evaluate_run
    from train.data import load_split_clips

    from .evaluator import train_evaluator

    progress = not args.no_progress
    if args.evaluator is None and not _done(run, "evaluator"):
        with clock("evaluator"):
            train_evaluator(cfg, args, run / "evaluator", device=device, progress=progress)
            _mark_done(run, "evaluator", Dist())
    with clock("samples"):
        test_clips = load_split_clips(args.data, args.data_root, args.skip_bad, "test")
        samples = _write_samples(model, run, test_clips[:SAMPLE_TEXTS], cfg.train.num_frames, progress)
    print("samples: " + ", ".join(str(s) for s in samples))
    with clock("evaluation"):
        table = evaluate_run(run, evaluator_dir=args.evaluator, device=device, progress=progress)
    print(table)
    plot_losses(run / "log.jsonl", run / "loss.png")
    clock.write(run)
    log.log(event="end", seconds=round(time.time() - start, 1), stages={k: round(v, 1) for k, v in clock.seconds.items()})
    print(clock.summary())
    print(f"done in {time.time() - start:.0f} s; run folder: {run}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m bench.sample_videos RUN``: the cost of train.full's sample videos.

Renders the side-by-side videos (ground truth | generated | VAE reconstruction) of the first 4
test sentences of the run's data, as ``train.full`` does, from poses computed once, and prints
wall seconds and CPU seconds (this process plus the ffmpeg encoders it waits for). CPU seconds
are the figure to compare on a shared machine, where wall time depends on the other load::

    python -m bench.sample_videos runs/tiny-builtin
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch


def _cpu() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run folder of train.full (with model/)")
    p.add_argument("--count", type=int, default=4, help="sentences (train.full writes 4)")
    p.add_argument("--data", default="builtin", help="the run's dataset: builtin or how2sign")
    p.add_argument("--data-root", default=None, help="DATA_ROOT of how2sign")
    args = p.parse_args(argv)
    from sald_fast.eval.evaluate import reference_poses, vae_reconstruct
    from sald_fast.pipeline import SignSALD
    from sald_fast.render import save_side_by_side
    from train.data import load_split_clips

    model = SignSALD.load(Path(args.run) / "model")
    clips = load_split_clips(args.data, args.data_root, False, "test")[: args.count]
    ref, lengths, texts, feats = reference_poses(clips, model.config.train.num_frames, progress=False, with_features=True)
    gen = model.generate(texts, num_frames=int(lengths.max()), lengths=lengths.tolist(), seed=0).positions
    with torch.no_grad():
        recon = vae_reconstruct(model.vae.eval(), feats, progress=False)
    frames = int(lengths.sum())
    with tempfile.TemporaryDirectory() as tmp:
        wall, cpu = time.time(), _cpu()
        for i, text in enumerate(texts):
            n = int(lengths[i])
            save_side_by_side([("ground truth", ref[i, :n].numpy()), ("generated", gen[i, :n].numpy()),
                               ("VAE reconstruction", recon[i, :n].numpy())], Path(tmp) / f"s{i}.mp4",
                              fps=float(model.config.train.fps), title=text)
        wall, cpu = time.time() - wall, _cpu() - cpu
    print(f"{len(texts)} side-by-side videos, {frames} frames x 3 panels: {wall:.1f} s wall, {cpu:.1f} s CPU "
          f"({1000 * cpu / frames:.0f} ms CPU per frame)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``sald-fast`` command: ``generate`` poses and animations, ``evaluate`` a run.

    sald-fast generate "where is the library?" --checkpoint RUN --out where.mp4
    sald-fast generate "where is the library?" --checkpoint RUN --out where.pose
    sald-fast generate "where is the library?" --checkpoint RUN --out where.mp4 --smplx-model SMPLX_NEUTRAL.npz
    sald-fast evaluate --checkpoint RUN
    sald-fast cache [--prune | --clear]

Both first print which implementation each op runs (:func:`print_backend_line`, e.g. ``ops on cpu
(backend auto): film_residual_layernorm=extension ...``); ``--backend`` picks the
:mod:`sald_fast.ops` backend (default ``auto``: per call the fastest implementation that can run
the inputs, falling back to the reference with the reason logged once). ``generate
--cuda-graph`` captures the whole sampling run as one CUDA graph and replays it (CUDA only). Any problem with the
input (missing or corrupted checkpoint, checkpoint from another skeleton, empty text, unknown
scheduler) prints one line ``error: ...`` and exits with code 2. ``cache`` shows the folder of
compiled sampling libraries (``generate(compile=True)`` on the CPU, :mod:`sald_fast.aot`), its size
and bound; ``--prune`` cuts it to the bound now, ``--clear`` deletes every library.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .ops.dispatch import BACKENDS

if TYPE_CHECKING:
    import torch

__all__ = ["main", "resolve_model_dir", "print_backend_line", "build_parser", "DEFAULT_BACKEND"]


def print_backend_line(device: torch.device | str, backend: str | None = None, grad: bool | None = None) -> str:
    """Print (to stdout) and return :func:`sald_fast.ops.backend_line` for ``device`` and ``backend``
    (None: the process default), the start-up line of ``sald-fast`` and ``python -m train.full``;
    ``grad``: whether the command's calls record autograd (``sald-fast``'s commands: False; None:
    not considered), which ``auto`` reads on the CPU.

    Loads (and builds) the backends now. Sets up ``logging`` (WARNING, bare messages on stderr)
    when nothing has configured it, so the ops' fallback notices reach the terminal.
    """
    from .ops import backend_line

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
    line = backend_line(device, backend, grad=grad)
    print(line, flush=True)
    return line


def _start(args: argparse.Namespace) -> str:
    """The device of a command (``--device``, default CUDA when available); sets ``--backend`` as the
    process default (and gives it to the loaded model) and prints the line."""
    import torch

    from . import ops

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ops.set_backend(args.backend)
    print_backend_line(device, grad=False)  # generate / evaluate / render: no gradients
    return device


def resolve_model_dir(checkpoint: str | Path) -> Path:
    """A run folder (holding ``model/``) or a model folder itself -> the model folder."""
    path = Path(checkpoint)
    if (path / "model" / "config.json").exists():
        return path / "model"
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} holds no config.json (and no model/ folder): "
                                "is it a run folder of `python -m train.full`?")
    return path


def _run_folder(checkpoint: str | Path) -> Path:
    path = Path(checkpoint)
    return path.parent if path.name == "model" else path


def _generate(args: argparse.Namespace) -> int:
    import numpy as np

    from .pipeline import SignSALD
    from .render import save_animation

    out = Path(args.out)
    if out.suffix.lower() not in (".mp4", ".gif", ".npz", ".pose"):
        raise ValueError(f"--out must end in .mp4, .gif, .npz or .pose, got {out.name!r}")
    if not isinstance(args.text, str) or not args.text.strip():
        raise ValueError("the text to sign is empty")
    mesh_model = None
    if args.smplx_model is not None:
        if out.suffix.lower() not in (".mp4", ".gif"):
            raise ValueError(f"--smplx-model renders a mesh video: --out must end in .mp4 or .gif, got {out.name!r}")
        from .smplx_mesh import load_smplx_model

        mesh_model = load_smplx_model(args.smplx_model)  # fail on a bad model file before generating
    device = _start(args)
    model = SignSALD.load(resolve_model_dir(args.checkpoint), device=device, backend=args.backend)
    if args.frames is None and model.duration is None:
        print(f"note: this checkpoint has no duration model (trained before it): generating "
              f"{model.config.train.num_frames} frames (config.train.num_frames); --frames N sets it", file=sys.stderr)
    result = model.generate([args.text], num_frames=args.frames, steps=args.steps, guidance=args.guidance,
                            seed=args.seed, scheduler=args.scheduler, progress=not args.quiet,
                            cuda_graph=args.cuda_graph)
    fps = float(model.config.train.fps)
    npz = out.with_suffix(".npz")
    arrays = {k: np.asarray(v[0]) for k, v in result.smplx.items()}
    arrays["joint_positions"] = result.positions[0].detach().cpu().numpy()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = npz.with_name(f".{npz.stem}.tmp.npz")
    np.savez(tmp, text=np.array(args.text), fps=np.array(fps), **arrays)
    tmp.replace(npz)
    written = [npz]
    if out.suffix.lower() == ".pose":
        written.append(result.to_pose(out, fps=fps))
    elif mesh_model is not None:
        from .render import save_frames
        from .smplx_mesh import render_mesh_frames

        written.append(save_frames(render_mesh_frames(mesh_model, arrays, title=args.text), out, fps=fps))
    elif out.suffix.lower() != ".npz":
        written.append(save_animation(arrays["joint_positions"], out, fps=fps, title=args.text))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .eval import evaluate_run

    device = _start(args)
    table = evaluate_run(_run_folder(args.checkpoint), evaluator_dir=args.evaluator, num_samples=args.num_samples, steps=args.steps,
                         seed=args.seed, device=device, progress=not args.quiet,
                         dtw_procrustes=args.dtw_procrustes, videos=args.videos, backend=args.backend)
    print(table)
    return 0


DEFAULT_BACKEND = "auto"
_BACKEND_HELP = ("sald_fast.ops backend (default auto: per call the fastest implementation that can run the "
                 "inputs, else the reference, the reason logged once)")


def build_parser() -> argparse.ArgumentParser:
    """The ``sald-fast`` argument parser (sub-commands ``generate``, ``evaluate`` and ``cache``)."""
    p = argparse.ArgumentParser(prog="sald-fast", description="Sign-SALD: text to sign-language poses.")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate poses (.npz) and an animation (.mp4/.gif) for a text")
    g.add_argument("text", help="the English sentence to sign")
    g.add_argument("--checkpoint", required=True, help="run folder of train.full (or its model/ folder)")
    g.add_argument("--out", required=True,
                   help="output .mp4, .gif (animation), .pose (pose-format file) or .npz (an .npz is always written beside)")
    g.add_argument("--smplx-model", default=None, metavar="PATH",
                   help="your SMPL-X model file (SMPLX_NEUTRAL.npz or .pkl): the .mp4/.gif shows the SMPL-X mesh "
                        "instead of the skeleton")
    g.add_argument("--steps", type=int, default=None, help="sampling steps (default: the config's, 50 in paper)")
    g.add_argument("--scheduler", default=None, help="ddim (default), dpm++, ddpm, euler, unipc, ...")
    g.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--frames", type=int, default=None, help="number of frames (default: predicted from the text by the checkpoint's duration model)")
    g.add_argument("--device", default=None)
    g.add_argument("--backend", default=DEFAULT_BACKEND, choices=BACKENDS, help=_BACKEND_HELP)
    g.add_argument("--cuda-graph", action="store_true",
                   help="capture the whole sampling run as one CUDA graph and replay it (CUDA; ddim, dpm++, ...)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    e = sub.add_parser("evaluate", help="print the evaluation table of a run (paper Table 1 form)")
    e.add_argument("--checkpoint", required=True, help="run folder of train.full")
    e.add_argument("--evaluator", default=None,
                   help="evaluation models to use (default RUN/evaluator); pass one folder to compare runs fairly")
    e.add_argument("--num-samples", type=int, default=None, help="test sentences to use (default: all)")
    e.add_argument("--steps", type=int, default=None)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--dtw-procrustes", action="store_true",
                   help="add the PA-DTW-MJE column (Procrustes per frame pair: one SVD each, slow)")
    e.add_argument("--videos", type=int, default=0, metavar="N",
                   help="also write side-by-side videos (ground truth | generated | VAE reconstruction) of the first "
                        "N test sentences to RUN/videos/")
    e.add_argument("--device", default=None)
    e.add_argument("--backend", default=DEFAULT_BACKEND, choices=BACKENDS, help=_BACKEND_HELP)
    e.add_argument("--quiet", action="store_true")
    c = sub.add_parser("cache", help="show (or prune, or clear) the disk cache of compiled sampling libraries")
    action = c.add_mutually_exclusive_group()
    action.add_argument("--prune", action="store_true",
                        help="delete the least recently used libraries beyond the limit (SALD_FAST_CACHE_MAX_MB)")
    action.add_argument("--clear", action="store_true", help="delete every compiled library")
    return p


def _cache(args: argparse.Namespace) -> int:
    """``sald-fast cache``: print the library folder, its size and its limit (after pruning or
    clearing it when asked)."""
    from .aot import cache_dir, cache_libraries, cache_limit_bytes, prune_cache

    folder, limit = cache_dir(), cache_limit_bytes()
    if args.clear or args.prune:
        removed = prune_cache(max_bytes=0 if args.clear else limit, folder=folder)
        print(f"deleted {len(removed)} file(s)")
    libraries = cache_libraries(folder)
    total = sum(size for _, size in libraries)
    kinds = {}
    for path, _ in libraries:
        kind = path.name.split("-", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    mb = 2 ** 20
    print(f"compiled libraries in {folder}: {len(libraries)}"
          + (f" ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))})" if kinds else "")
          + f", {total / mb:.1f} MB; limit {'none' if limit is None else f'{limit / mb:.0f} MB'} "
          "(SALD_FAST_CACHE_MAX_MB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the ``sald-fast`` command on ``argv`` (default ``sys.argv[1:]``); returns the exit code
    (0, or 2 with one ``error: ...`` line on stderr for bad input)."""
    args = build_parser().parse_args(argv)
    try:
        commands = {"generate": _generate, "evaluate": _evaluate, "cache": _cache}
        return commands[args.command](args)
    except (ValueError, FileNotFoundError, KeyError, OSError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

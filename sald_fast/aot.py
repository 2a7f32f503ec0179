"""Sampling modules compiled ahead of time for the CPU (AOTInductor).

:class:`AOTDenoiser` runs the call the sampler makes at every step -- ``denoiser(z_t, t,
lengths=, text_context=, film=, shared_halves=)`` with the text keys/values from ``encode_text``
and a FiLM row from ``film_parameters``, or the whole classifier-free-guided step
(:meth:`AOTDenoiser.guided_prediction`) -- through a shared library that AOTInductor built for
that input shape (``torch.export`` of the reference ops, then ``torch._inductor.
aoti_compile_and_package``). A call is one C++ entry: no Dynamo frame, guard or AOTAutograd
wrapper per step, which on a 2-core CPU was ~0.2 ms of each tiny-preset step (10 ms of a DDIM-50
sentence). :class:`AOTDecoder` does the same for the VAE decode of the sampled latents, with the
number of latent frames a dynamic dimension (one library for every length >= 3).

By default a denoiser library of a model of width >= 128 (the paper preset's is 256) has its
weights baked in as constants (``freeze``): Inductor's freezing passes then run its linear layers
as oneDNN matmuls on weights packed once at compile time, with the bias, GELU and residual adds
fused into them, which made a paper-preset step 1.06-1.19x and a width-128 one 1.07x faster than
weights passed as inputs (MKL ``addmm``, whose bias is first copied into the output), and a
tiny-preset step (width 64) 0.85-0.92x as fast (docs/DESIGN.md, Sampling). Such a library serves
one set of weights: its cache key holds a digest of them. Otherwise the weights are inputs of the
library, so it depends only on the model config, the input shapes and the code: it is written
once to :func:`cache_dir` and serves every checkpoint of that config (no recompile after training
or loading new weights). The cache is bounded (:func:`cache_limit_bytes`): each compile
ends by deleting the least recently used libraries beyond it (:func:`prune_cache`). Every other
call -- with gradients enabled, without a text context or FiLM row, on a non-CPU tensor -- runs
the eager copy of the module.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from .denoiser import TextContext

__all__ = ["AOTDenoiser", "AOTDecoder", "cache_dir", "cache_libraries", "cache_limit_bytes", "default_freeze",
           "prune_cache"]

_log = logging.getLogger(__name__)
# environment variables that change what Inductor generates (read when a library is compiled)
_ENV_PREFIXES = ("TORCHINDUCTOR_", "TORCHDYNAMO_", "TORCH_COMPILE_")
# the cache's default bound: ~30 frozen paper-preset libraries (~60 MB each) or ~250 tiny ones
DEFAULT_CACHE_LIMIT_MB = 2048
# a compile's temporary file older than this is left over from a killed process
_STALE_TEMP_SECONDS = 3600.0


def cache_dir() -> Path:
    """Where compiled libraries are kept: ``$SALD_FAST_CACHE/aoti``, else
    ``$XDG_CACHE_HOME/sald_fast/aoti``, else ``~/.cache/sald_fast/aoti``."""
    root = os.environ.get("SALD_FAST_CACHE")
    if root:
        return Path(root) / "aoti"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sald_fast" / "aoti"


def cache_limit_bytes() -> int | None:
    """The most bytes of libraries :func:`cache_dir` keeps: ``$SALD_FAST_CACHE_MAX_MB`` megabytes
    (``0``: no limit), else :data:`DEFAULT_CACHE_LIMIT_MB` (2048). A library is ~8 MB at the tiny
    preset and ~60 MB frozen at the paper preset (one per checkpoint). ``ValueError`` naming the
    variable when it is not a whole number >= 0."""
    raw = os.environ.get("SALD_FAST_CACHE_MAX_MB")
    if raw is None or not raw.strip():
        return DEFAULT_CACHE_LIMIT_MB * 2 ** 20
    try:
        mb = int(raw)
    except ValueError:
        mb = -1
    if mb < 0:
        raise ValueError(f"SALD_FAST_CACHE_MAX_MB must be a whole number of megabytes >= 0 (0: no limit), got {raw!r}")
    return None if mb == 0 else mb * 2 ** 20


def prune_cache(max_bytes: int | None = None, folder: str | os.PathLike | None = None,
                keep: tuple[str | os.PathLike, ...] = ()) -> list[Path]:
    """Delete the least recently used compiled libraries (``*.pt2`` in ``folder``, default
    :func:`cache_dir`) until the rest total at most ``max_bytes`` (default:
    :func:`cache_limit_bytes`, which may be no limit), never a path in ``keep``; and a compile's
    temporary files left by a killed process (older than an hour). A library's use time is its
    modification time, which loading it renews. Returns the deleted paths. Runs after every
    compile, so the cache stays bounded; a library deleted while another process still needs it is
    compiled again there."""
    if max_bytes is None:
        max_bytes = cache_limit_bytes()
    elif not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0:
        raise ValueError(f"max_bytes must be an int >= 0 or None, got {max_bytes!r}")
    folder = Path(folder) if folder is not None else cache_dir()
    kept = {Path(k).resolve() for k in keep}
    libraries, temps = _scan(folder)
    now = time.time()
    removed = [path for mtime, path in temps if now - mtime > _STALE_TEMP_SECONDS and _unlink(path)]
    total = sum(size for _, size, _ in libraries)
    for _, size, path in libraries:  # oldest use first
        if max_bytes is None or total <= max_bytes:
            break
        if path.resolve() in kept:
            continue
        if _unlink(path):
            removed.append(path)
        total -= size
    if removed:
        _log.info("pruned %d file(s) from the compiled-library cache %s (limit %s)", len(removed), folder,
                  "none" if max_bytes is None else f"{max_bytes / 2 ** 20:.0f} MB")
    return removed


def cache_libraries(folder: str | os.PathLike | None = None) -> list[tuple[Path, int]]:
    """The compiled libraries in ``folder`` (default :func:`cache_dir`) as (path, bytes), least
    recently used first; compiles in progress are not listed."""
    libraries, _ = _scan(Path(folder) if folder is not None else cache_dir())
    return [(path, size) for _, size, path in libraries]


def _scan(folder: Path) -> tuple[list[tuple[float, int, Path]], list[tuple[float, Path]]]:
    """The libraries of ``folder`` as (use time, bytes, path), oldest use first, and the compile
    temporaries as (modification time, path). Files deleted meanwhile are skipped."""
    libraries, temps = [], []
    for path in folder.glob("*.pt2") if folder.is_dir() else ():
        try:
            stat = path.stat()
        except FileNotFoundError:  # removed meanwhile by another process
            continue
        if ".tmp" in path.stem:  # a compile's temporary: {kind}-{key}.tmp{pid}.pt2
            temps.append((stat.st_mtime, path))
        else:
            libraries.append((stat.st_mtime, stat.st_size, path))
    libraries.sort(key=lambda item: (item[0], str(item[2])))
    return libraries, temps


def _unlink(path: Path) -> bool:
    try:
        path.unlink()
        return True
    except FileNotFoundError:
        return False


def _touch(path: Path) -> None:
    """Mark a library as just used (its modification time: what :func:`prune_cache` reads).
    A read-only cache keeps its times."""
    try:
        os.utime(path)
    except OSError:
        pass


@functools.lru_cache(maxsize=1)
def _source_digest() -> str:
    """A hash of every Python file of the package: the code a compiled library depends on (any
    change invalidates the cache; a list of the traced modules would miss one someday)."""
    here = Path(__file__).parent
    h = hashlib.sha256()
    for path in sorted(here.rglob("*.py")):
        h.update(path.relative_to(here).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _compile_env() -> dict[str, str]:
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith(_ENV_PREFIXES)}


def _guided_step(denoise, z_t: torch.Tensor, t: torch.Tensor, lengths: torch.Tensor | None, guidance) -> torch.Tensor:
    """Both classifier-free-guidance halves of B samples through ``denoise(z, t, lengths)`` (a batch
    of 2B: conditional, then unconditional), combined: ``eps_u + guidance * (eps_c - eps_u)`` float32."""
    lengths = None if lengths is None else torch.cat([lengths, lengths])
    eps_c, eps_u = denoise(torch.cat([z_t, z_t]), torch.cat([t, t]), lengths).float().chunk(2)
    return eps_u + guidance * (eps_c - eps_u)


class _FlatForward(nn.Module):
    """The sampler's denoiser call with the weights and the text context as flat tensor inputs
    (what ``torch.export`` traces). The denoiser is held outside the module tree, so the export
    sees no parameters: they arrive as the trailing inputs, in ``names`` order.

    ``guided``: the classifier-free-guidance step of :func:`sald_fast.diffusion._guided` in one
    library: z_t, t, lengths of the B samples and a 0-d ``guidance`` in, the conditional and
    unconditional halves built and run (as shared halves), and the guided prediction
    ``eps_u + guidance * (eps_c - eps_u)`` (B, ...) float32 out.

    ``frozen``: the denoiser is a submodule and ``names`` is ignored, so the export sees its
    weights as parameters (constants of the library) and no weight inputs follow."""

    def __init__(self, denoiser: nn.Module, names: list[str], num_keys: int, num_values: int, has_mask: bool,
                 has_lengths: bool, shared_halves: bool, guided: bool, frozen: bool = False) -> None:
        super().__init__()
        if frozen:  # the weights are the module's own: export makes them constants of the library
            self.denoiser = denoiser
            names = []
        else:
            object.__setattr__(self, "denoiser", denoiser)
        self.names, self.num_keys, self.num_values = names, num_keys, num_values
        self.has_mask, self.has_lengths, self.shared_halves, self.guided = has_mask, has_lengths, shared_halves, guided

    def forward(self, *flat: torch.Tensor) -> torch.Tensor:
        z_t, t, film, *rest = flat
        guidance = rest.pop(0) if self.guided else None
        lengths = rest.pop(0) if self.has_lengths else None
        mask = rest.pop(0) if self.has_mask else None
        keys, rest = rest[:self.num_keys], rest[self.num_keys:]
        values, weights = rest[:self.num_values], rest[self.num_values:]
        context = TextContext(keys, values, mask)
        # guided: the unconditional half attends to the null token alone (one row of it per sample):
        # its cross-attention is that token's projected value (Denoiser.forward's null_text_half)
        null_text = self.guided and self.num_values > 0 and keys[0].shape[0] == 2 * z_t.shape[0]
        state = dict(zip(self.names, weights))

        def denoise(z, t, lengths):
            return torch.func.functional_call(self.denoiser, state, (z, t),
                                              dict(lengths=lengths, text_context=context, film=film,
                                                   shared_halves=self.shared_halves, null_text_half=null_text))

        return _guided_step(denoise, z_t, t, lengths, guidance) if self.guided else denoise(z_t, t, lengths)


class AOTDenoiser:
    """A frozen, eval-mode copy of a :class:`~sald_fast.denoiser.Denoiser` whose sampling calls run
    AOTInductor-compiled code on the CPU (see the module docstring).

    ``AOTDenoiser(denoiser)`` copies the module (later changes to ``denoiser`` are not seen: make
    a new one, as :meth:`SignSALD.compiled_denoiser` does). The copy runs backend "reference",
    whose ops Inductor fuses. The first call of each input signature (shapes, dtypes, which
    optional inputs are given) loads its library from :func:`cache_dir`, or compiles it there
    first (about a minute on a 2-core CPU; logged): one library per N' (the number of latent
    frames; ``SignSALD.generate`` pads N' to :func:`~sald_fast.pipeline.compile_bucket`).
    ``dynamic_frames=True``: N' is a dynamic dimension of the library, so one serves every N'
    from 2 to ``config.max_latent_frames`` (N' = 1 gets its own), no padding needed; measured
    8.5% slower than the static library at the paper preset's 64 latent frames (docs/DESIGN.md),
    so not the default. ``autotune``: Inductor's ``max_autotune``
    (benchmarks its C++ GEMM templates for the attention matmuls: slower to compile, faster to
    run). ``freeze``: the weights are constants of the library (see the module docstring; a
    library per set of weights, up to about twice the compile time); None (default): :func:`default_freeze`
    of the config. Attributes not defined here (``encode_text``, ``film_parameters``, ``config``
    ...) are the copy's.
    """

    def __init__(self, denoiser: nn.Module, autotune: bool = True, cache: str | os.PathLike | None = None,
                 dynamic_frames: bool = False, freeze: bool | None = None) -> None:
        module = copy.deepcopy(denoiser).eval().requires_grad_(False)
        self.dynamic_frames = bool(dynamic_frames)
        self.freeze = default_freeze(module.config) if freeze is None else bool(freeze)
        if hasattr(module, "backend"):
            module.backend = "reference"
        self.module = module
        self.autotune = bool(autotune)
        self.cache = Path(cache) if cache is not None else None
        self._names, self._weights = _state(module)
        # what follows the inputs in a library call: the weights, or nothing when they are constants
        self._weight_inputs = [] if self.freeze else self._weights
        self._weights_key: str | None = None  # frozen: the digest of the weights, taken on first compile/load
        self._runners: dict[tuple, object] = {}

    def __getattr__(self, name: str):
        if name == "module":  # not yet set (during copy / unpickling)
            raise AttributeError(name)
        return getattr(self.module, name)

    @property
    def compiled_signatures(self) -> list[tuple]:
        """The input signatures this object has a loaded library for."""
        return list(self._runners)

    def __call__(self, z_t: torch.Tensor, t, text=None, text_mask=None, lengths=None, drop_text=None, *,
                 text_context: TextContext | None = None, film: torch.Tensor | None = None,
                 shared_halves: bool = False) -> torch.Tensor:
        """``Denoiser.forward``'s signature. The sampler's calls (``text_context`` and ``film``
        given, no gradients, CPU tensors) run the compiled library; any other call, the eager copy."""
        if not self._compiles(z_t, t, text, text_mask, drop_text, text_context, film):
            return self.module(z_t, t, text, text_mask, lengths, drop_text, text_context=text_context, film=film,
                               shared_halves=shared_halves)
        # the eager copy's checks (metadata only) first: bad input fails here with its message,
        # never inside the library
        self.module._check_inputs(z_t, t, None, None, lengths, None, text_context)
        self.module._check_film(film, shared_halves, z_t.shape[0], z_t.device)
        head, tail = self._flatten([z_t, t, film], lengths, text_context)
        flat = head + tail
        return self._runner(flat, (bool(shared_halves), False), text_context, lengths)(flat + self._weight_inputs)

    def guided_prediction(self, z_t: torch.Tensor, t: torch.Tensor, lengths: torch.Tensor | None,
                          text_context: TextContext, film: torch.Tensor, guidance: float) -> torch.Tensor:
        """The classifier-free-guided prediction for B samples: the denoiser on the batch of
        2B (the conditional half, then the unconditional half), as shared halves, then
        ``eps_u + guidance * (eps_c - eps_u)`` (B, N', J', d_z) float32, all in one library call.

        z_t (B, N', J', d_z); t, lengths (B,); ``text_context`` of batch 2B from ``encode_text``:
        the B conditional rows, then B rows with ``drop_text`` True (the null token alone: their
        cross-attention is computed once per layer, ``Denoiser.forward``'s ``null_text_half``), or
        of batch 1; ``film`` (1, F, 2, D) from ``film_parameters``. One call of
        :meth:`guided_steps`.
        """
        return self.guided_steps(z_t, t, lengths, text_context, film, guidance)(z_t, t, 0)

    def guided_steps(self, z_t: torch.Tensor, t: torch.Tensor, lengths: torch.Tensor | None,
                     text_context: TextContext, film: torch.Tensor, guidance: float):
        """The guided prediction of every step of one sampling run: checks the run's inputs once
        and returns ``step(z_t, t, i)`` -> :meth:`guided_prediction` with FiLM row ``film[i]``.

        ``z_t`` (B, N', J', d_z), ``t`` (B,): the first step's (every step's have their shapes and
        dtypes); ``film`` (S, F, 2, D): the FiLM table of the run's S steps (``film_parameters``); the
        rest as for :meth:`guided_prediction`. A step is the library call alone (the text keys,
        values, mask, lengths and weights are flattened once per run); the planned sampler uses
        it when the denoiser offers it.
        """
        if not self._compiles(z_t, t, None, None, None, text_context, film):
            def eager_step(z, t, i):
                return _guided_step(lambda z, t, lengths: self.module(
                    z, t, lengths=lengths, text_context=text_context, film=film[i:i + 1], shared_halves=True),
                    z, t, lengths, guidance)
            return eager_step
        B, shape = z_t.shape[0], tuple(z_t.shape)
        self.module._check_inputs(z_t, t, None, None, lengths, None, None)
        if not isinstance(text_context, TextContext) or text_context.batch_size not in (1, 2 * B):
            raise ValueError(f"text_context must be a TextContext of batch 1 or 2B = {2 * B} (conditional rows, then "
                             f"unconditional), got {getattr(text_context, 'batch_size', type(text_context).__name__)}")
        if film.dim() != 4:
            raise ValueError(f"film must be a (S, F, 2, D) table of FiLM rows from film_parameters, got shape "
                             f"{tuple(film.shape)}")
        self.module._check_film(film[:1], True, 2 * B, z_t.device)
        scale = torch.tensor(float(guidance), dtype=torch.float32)
        head, tail = self._flatten([z_t, t, film[:1], scale], lengths, text_context)
        runner = self._runner(head + tail, (True, True), text_context, lengths)
        tail = tail + self._weight_inputs
        film, t0 = film.contiguous(), t

        def step(z: torch.Tensor, t: torch.Tensor, i: int) -> torch.Tensor:
            if tuple(z.shape) != shape or z.dtype != z_t.dtype or t.shape != t0.shape or t.dtype != t0.dtype:
                raise ValueError(f"every step of a run takes z_t {shape} {z_t.dtype} and t {tuple(t0.shape)} "
                                 f"{t0.dtype}, as its first, got {tuple(z.shape)} {z.dtype} and {tuple(t.shape)} {t.dtype}")
            return runner([z.contiguous(), t.contiguous(), film[i:i + 1], scale] + tail)

        return step

    @staticmethod
    def _compiles(z_t, t, text, text_mask, drop_text, text_context, film) -> bool:
        return (text_context is not None and film is not None and text is None and text_mask is None
                and drop_text is None and isinstance(z_t, torch.Tensor) and isinstance(t, torch.Tensor)
                and t.dim() == 1 and z_t.device.type == "cpu" and not torch.is_grad_enabled())

    @staticmethod
    def _flatten(inputs: list[torch.Tensor], lengths, context: TextContext) -> tuple[list, list]:
        """The library's inputs before the weights: ``inputs`` (contiguous), then what a run keeps:
        lengths, text mask, keys, values (contiguous: a library assumes the strides it was built for)."""
        tail = ([] if lengths is None else [lengths]) + ([] if context.mask is None else [context.mask])
        tail += list(context.keys) + list(context.values)
        return [x.contiguous() for x in inputs], [x.contiguous() for x in tail]

    def _runner(self, flat: list[torch.Tensor], modes: tuple[bool, bool], context: TextContext, lengths):
        """The loaded library for the inputs ``flat`` (weights excluded), loaded or compiled on first use."""
        flags = (len(context.keys), len(context.values), context.mask is not None, lengths is not None, *modes)
        shapes = [tuple(x.shape) for x in flat]
        if self.dynamic_frames and shapes[0][1] >= 2:  # one library for every N' >= 2 (N' = 1: its own)
            shapes[0] = (shapes[0][0], None, *shapes[0][2:])
        signature = flags + tuple((shape, x.dtype) for shape, x in zip(shapes, flat))
        runner = self._runners.get(signature)
        if runner is None:
            runner = self._runners[signature] = self._load(signature, flat, flags)
        return runner

    # ------------------------------------------------------------------ compile / load

    def _load(self, signature: tuple, inputs: list[torch.Tensor], flags: tuple):
        flat = _FlatForward(self.module, self._names, *flags, frozen=self.freeze)
        dynamic = None
        if signature[len(flags)][0][1] is None:  # N' dynamic
            dynamic = {0: {1: torch.export.Dim("latent_frames", min=2, max=self.module.config.max_latent_frames)}}
        if self.freeze and self._weights_key is None:  # once per copy (the copy's weights never change)
            self._weights_key = _weights_digest(self._weights)
        return _library("denoiser", self.module, self._names, self._weights, signature, flat, inputs, self.autotune,
                        self.cache, dynamic_shapes=dynamic, frozen_weights=self._weights_key)


def default_freeze(config) -> bool:
    """Whether :class:`AOTDenoiser` bakes the weights of a denoiser with this
    :class:`~sald_fast.config.DenoiserConfig` into its libraries by default: for ``dim >= 128``.
    Measured on a 2-core Zen 4 (docs/DESIGN.md, Sampling): a step of the paper preset (width 256)
    1.06-1.19x faster frozen, of the paper preset at width 128 1.07x, of the tiny preset (width
    64, K = 64 GEMMs, where oneDNN's per-call cost shows) 0.85-0.92x."""
    return int(getattr(config, "dim", 0)) >= 128


def _weights_digest(weights: list[torch.Tensor]) -> str:
    """A sha256 of the weights' values, dtypes and shapes: the cache key of a frozen library."""
    h = hashlib.sha256()
    for w in weights:
        w = w.detach().cpu().contiguous()
        h.update(f"{w.dtype}{tuple(w.shape)}".encode())
        h.update(w.reshape(-1).view(torch.uint8).numpy().tobytes() if w.numel() else b"")
    return h.hexdigest()


def _state(module: nn.Module) -> tuple[list[str], list[torch.Tensor]]:
    """The names and tensors of ``module``'s parameters and buffers (the libraries' weight inputs)."""
    names = [n for n, _ in module.named_parameters()] + [n for n, _ in module.named_buffers()]
    state = dict(module.named_parameters())
    state.update(module.named_buffers())
    return names, [state[n] for n in names]


def _library(kind: str, module: nn.Module, names: list[str], weights: list[torch.Tensor], signature: tuple,
             flat: nn.Module, inputs: list[torch.Tensor], autotune: bool, cache: Path | None,
             dynamic_shapes=None, frozen_weights: str | None = None):
    """The compiled library of ``flat`` for ``inputs`` (+ the weights, unless ``frozen_weights``,
    the weights' :func:`_weights_digest`, is given: then they are constants of the library, and
    Inductor's freezing passes run): loaded from the cache folder, or exported, compiled and
    written there first (atomically). Returns ``run(flat_inputs) -> output``."""
    frozen = frozen_weights is not None
    folder = cache if cache is not None else cache_dir()
    config = getattr(module, "config", None)
    described = {
        "kind": kind,
        "config": asdict(config) if config is not None else type(module).__name__,
        "signature": repr(signature),
        "weights": [(n, tuple(w.shape), str(w.dtype)) for n, w in zip(names, weights)],
        "dynamic": repr(dynamic_shapes),
        "autotune": autotune,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "isa": str(torch._inductor.cpu_vec_isa.pick_vec_isa()),
        "code": _source_digest(),
        "env": _compile_env(),
    }
    if frozen:
        described["frozen_weights"] = frozen_weights
    key = hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()[:32]
    path = folder / f"{kind}-{key}.pt2"
    cache_limit_bytes()  # a bad SALD_FAST_CACHE_MAX_MB fails here, not after a compile
    for attempt in (0, 1):
        if not path.is_file():
            _compile(kind, path, flat, inputs, [] if frozen else weights, dynamic_shapes, autotune, frozen)
            prune_cache(folder=folder, keep=(path,))
        else:
            _touch(path)
        try:
            package = torch._inductor.aoti_load_package(str(path))
            break
        except Exception:
            if attempt or path.is_file():
                raise
            _log.info("%s was deleted before it was loaded (pruned by another process); compiling it again", path)
    loader = getattr(package, "loader", None)
    if loader is not None and hasattr(loader, "boxed_run"):
        run = loader.boxed_run  # one C++ call on the flat list (the package's __call__ re-flattens a pytree)
        return lambda flat_inputs: run(flat_inputs)[0]
    return lambda flat_inputs: package(*flat_inputs)


def _compile(kind: str, path: Path, flat: nn.Module, inputs: list[torch.Tensor], weights: list[torch.Tensor],
             dynamic_shapes, autotune: bool, frozen: bool) -> None:
    """Export ``flat`` on ``inputs + weights`` and compile it with AOTInductor into the package ``path``
    (written atomically: a killed compile leaves no half-written library)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    _log.info("compiling the %s for input shapes %s with AOTInductor (once per shape and machine; kept in %s)",
              kind, [tuple(x.shape) for x in inputs], path.parent)
    args = inputs + weights
    # forward(*flat): one spec per input (``dynamic_shapes`` maps an input's index to its
    # dynamic dims), the weights static
    shapes = None if dynamic_shapes is None else (tuple(dynamic_shapes.get(i) for i in range(len(args))),)
    with torch.no_grad():
        program = torch.export.export(flat, tuple(args), dynamic_shapes=shapes, strict=False)
        tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.pt2")
        try:
            torch._inductor.aoti_compile_and_package(program, package_path=str(tmp),
                                                     inductor_configs={"max_autotune": autotune, "freezing": frozen})
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    _log.info("compiled in %.1f s: %s", time.perf_counter() - start, path)


class _DecodeLatents(nn.Module):
    """``SignSALD.decode_latents``: latents (B, N', J', d_z) -> unnormalised features (B, 4N', 44, 9)."""

    def __init__(self, vae: nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        scale = getattr(self.vae, "latent_scale", None)
        x = self.vae.decode(z / scale if isinstance(scale, torch.Tensor) else z)
        return self.vae.normalizer.denormalize(x)


class _FlatDecode(nn.Module):
    """:class:`_DecodeLatents` with the weights as trailing inputs (what ``torch.export`` traces)."""

    def __init__(self, decode: nn.Module, names: list[str]) -> None:
        super().__init__()
        object.__setattr__(self, "decode", decode)
        self.names = names

    def forward(self, *flat: torch.Tensor) -> torch.Tensor:
        z, *weights = flat
        return torch.func.functional_call(self.decode, dict(zip(self.names, weights)), (z,))


class AOTDecoder:
    """A frozen, eval-mode copy of a :class:`~sald_fast.vae.SkeletonVAE`'s decoder path,
    ``SignSALD.decode_latents``: latents (B, N', J', d_z) -> unnormalised features (B, 4N', 44, 9),
    compiled by AOTInductor on the CPU (see the module docstring).

    The number of latent frames is dynamic: one library per (batch, dtype) serves every N' >= 3
    (shorter inputs, calls with gradients enabled and non-CPU tensors run the eager copy, which
    runs backend "reference" like the library). ``autotune`` and ``cache`` as for
    :class:`AOTDenoiser`.
    """

    def __init__(self, vae: nn.Module, autotune: bool = True, cache: str | os.PathLike | None = None) -> None:
        vae = copy.deepcopy(vae).eval().requires_grad_(False)
        if hasattr(vae, "backend"):
            vae.backend = "reference"
        self.module = _DecodeLatents(vae)
        self.autotune = bool(autotune)
        self.cache = Path(cache) if cache is not None else None
        self._names, self._weights = _state(self.module)
        self._runners: dict[tuple, object] = {}

    @property
    def compiled_signatures(self) -> list[tuple]:
        """The input signatures (batch, J', d_z, dtype) this object has a loaded library for."""
        return list(self._runners)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        if not (isinstance(z, torch.Tensor) and z.dim() == 4 and z.shape[1] >= 3 and z.device.type == "cpu"
                and z.is_floating_point() and not torch.is_grad_enabled()):
            return self.module(z)
        self.module.vae._check_tensor(z, "z", "(B, N', J', d_z)", self.module.vae.latent_shape)  # eager's checks
        signature = (z.shape[0], *z.shape[2:], z.dtype)
        runner = self._runners.get(signature)
        if runner is None:
            flat = _FlatDecode(self.module, self._names)
            frames = torch.export.Dim("latent_frames", min=3)
            runner = self._runners[signature] = _library("decoder", self.module.vae, self._names, self._weights,
                                                         signature, flat, [z.contiguous()], self.autotune, self.cache,
                                                         dynamic_shapes={0: {1: frames}})
        return runner([z.contiguous()] + self._weights)

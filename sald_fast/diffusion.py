"""Gaussian diffusion in the VAE's latent space: training loss and guided sampling.

Forward process: linear beta schedule (``DiffusionConfig``: ``num_train_steps`` = 1000,
``beta_start`` .. ``beta_end``), ``z_t = sqrt(a_t) z_0 + sqrt(1 - a_t) eps`` with ``a_t`` the
cumulative product of ``1 - beta``. The denoiser predicts ``eps`` (the paper), the clean latent
``z_0`` or ``v = sqrt(a_t) eps - sqrt(1 - a_t) z_0`` (``DiffusionConfig.prediction_type``), trained
with an MSE that is uniform over timesteps (the paper) or min-SNR-gamma weighted
(``DiffusionConfig.loss_weighting``).

Sampling uses a ``diffusers`` scheduler (:data:`SCHEDULERS`; DDIM by default) with
classifier-free guidance ``eps = eps_u + w (eps_c - eps_u)``, the conditional and the
unconditional halves run as one batched forward. Timesteps use "trailing" spacing where the
scheduler supports it, so the first step starts from pure noise at ``t = T - 1``.

Shapes: z (B, N', J', d_z); text (B, L, text_dim); text_mask (B, L) bool; lengths (B,) int
(valid latent frames).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .config import DiffusionConfig
from .frames import frame_mask
from .ops.checks import validate_lengths, validate_text_mask

__all__ = ["SCHEDULERS", "PLANNED_SCHEDULERS", "make_scheduler", "GaussianDiffusion", "SamplingPlan",
           "sampling_plan", "cuda_graphs"]


def _scheduler_table() -> dict[str, tuple[str, dict]]:
    """name -> (diffusers class name, extra constructor kwargs)."""
    return {
        "ddim": ("DDIMScheduler", {}),
        "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
        "dpm++_single": ("DPMSolverSinglestepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
        "ddpm": ("DDPMScheduler", {}),
        "euler": ("EulerDiscreteScheduler", {}),
        "euler_a": ("EulerAncestralDiscreteScheduler", {}),
        "heun": ("HeunDiscreteScheduler", {}),
        "kdpm2": ("KDPM2DiscreteScheduler", {}),
        "unipc": ("UniPCMultistepScheduler", {}),
        "pndm": ("PNDMScheduler", {"skip_prk_steps": True}),
    }


class _LazySchedulers(dict):
    """name -> diffusers scheduler class, imported on first access (diffusers is slow to import)."""

    def __init__(self) -> None:
        super().__init__({name: None for name in _scheduler_table()})

    def __getitem__(self, name: str):
        if name not in self:
            raise KeyError(name)
        cls = super().__getitem__(name)
        if cls is None:
            import diffusers

            cls = getattr(diffusers, _scheduler_table()[name][0])
            super().__setitem__(name, cls)
        return cls

    def get(self, name, default=None):
        return self[name] if name in self else default

    def values(self):
        return [self[k] for k in self.keys()]

    def items(self):
        return [(k, self[k]) for k in self.keys()]


SCHEDULERS: dict[str, type] = _LazySchedulers()
"""Scheduler name (as given to ``--scheduler``) -> diffusers scheduler class."""


def make_scheduler(cfg: DiffusionConfig, name: str | None = None):
    """A fresh diffusers scheduler ``name`` (default ``cfg.scheduler``) for ``cfg``'s schedule:
    ``cfg.beta_schedule`` betas from ``beta_start`` to ``beta_end`` over ``num_train_steps``,
    ``cfg.prediction_type``, no sample clipping, trailing timestep spacing where supported."""
    name = cfg.scheduler if name is None else name
    if not isinstance(name, str) or name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS.keys())}")
    cls = SCHEDULERS[name]
    kwargs = {
        "num_train_timesteps": int(cfg.num_train_steps),
        "beta_start": float(cfg.beta_start),
        "beta_end": float(cfg.beta_end),
        "beta_schedule": cfg.beta_schedule,
        "prediction_type": cfg.prediction_type,
        "clip_sample": False,
        "thresholding": False,
        "timestep_spacing": "trailing",
        "set_alpha_to_one": True,  # DDIM/PNDM: the last step lands on the clean sample
        **_scheduler_table()[name][1],
    }
    accepted = inspect.signature(cls.__init__).parameters
    return cls(**{k: v for k, v in kwargs.items() if k in accepted})


def _randn(shape, generator: torch.Generator | None, device: torch.device, dtype=torch.float32) -> torch.Tensor:
    """Normal noise drawn on the generator's device (so a CPU generator gives the same numbers
    for any target device), then moved to ``device``."""
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gen_device, dtype=dtype).to(device)


def _module_device(module) -> torch.device:
    """Device of ``module``'s first parameter (CPU for a plain function or no parameters)."""
    params = getattr(module, "parameters", None)
    if params is not None:
        for p in params():
            return p.device
    return torch.device("cpu")


def _check_inputs(shape, text, text_mask, lengths) -> None:
    """Metadata checks (shapes, dtypes): no host synchronisation, so they run every training step."""
    B = shape[0]
    if text is not None:
        if text.dim() != 3 or text.shape[0] != B:
            raise ValueError(f"text must be (B={B}, L, text_dim), got {tuple(text.shape)}")
        if text_mask is not None and (text_mask.shape != text.shape[:2] or text_mask.dtype != torch.bool):
            raise ValueError(f"text_mask must be bool {tuple(text.shape[:2])}, got {text_mask.dtype} "
                             f"{tuple(text_mask.shape)}")
    elif text_mask is not None:
        raise ValueError("text_mask given without text")
    if lengths is not None:
        if lengths.shape != (B,) or lengths.dtype.is_floating_point or lengths.dtype == torch.bool:
            raise ValueError(f"lengths must be an int tensor of shape ({B},), got {lengths.dtype} {tuple(lengths.shape)}")


# ----------------------------------------------------------------------------- sampling plans

PLANNED_SCHEDULERS = ("ddim", "dpm++", "dpm++_single", "unipc", "euler", "pndm")
"""Schedulers whose update is deterministic and linear: sampled through a :class:`SamplingPlan`
(no diffusers call, no host synchronisation per step, CUDA-graph capturable)."""

_MAX_WINDOW = 4  # most model outputs a planned update may combine (PNDM's PLMS uses 4)


@dataclass(frozen=True)
class SamplingPlan:
    """A deterministic linear sampler, precomputed on the host once per (scheduler, steps, config).

    Step i of S: ``z_in = scales[i] * z_i``; ``out_i = model(z_in, timesteps[i])``; then
    ``z_{i+1} = sum_w a[i][w] * z_{i-w} + sum_w b[i][w] * out_{i-w}`` (w = 0 the newest; the
    multistep solvers read a few past samples and outputs). The start is
    ``z_0 = init_sigma * noise``. ``timesteps`` is (S,) in the scheduler's dtype (CPU).
    """

    scheduler: str
    timesteps: torch.Tensor
    init_sigma: float
    scales: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[tuple[float, ...], ...]

    @property
    def num_steps(self) -> int:
        return len(self.a)

    @property
    def window(self) -> int:
        """How many past samples / model outputs an update reads."""
        return max([len(c) for c in self.a + self.b], default=1)


def _plan_key(cfg: DiffusionConfig) -> tuple:
    return (int(cfg.num_train_steps), float(cfg.beta_start), float(cfg.beta_end), cfg.beta_schedule,
            cfg.prediction_type)


def sampling_plan(cfg: DiffusionConfig, scheduler: str, steps: int) -> SamplingPlan | None:
    """The :class:`SamplingPlan` of scheduler ``scheduler`` (a name) with ``steps`` steps for
    ``cfg``'s schedule, or None when the scheduler is not in :data:`PLANNED_SCHEDULERS`.

    Built on the CPU, once (cached), by running the diffusers scheduler on coefficient vectors:
    each update of these schedulers is an elementwise linear map of the samples and model
    outputs, so feeding basis vectors reads its coefficients off (least squares over the last
    few samples and outputs, checked to leave no residual). Raises ``ValueError`` when an update
    does not reduce to that form.
    """
    if scheduler not in PLANNED_SCHEDULERS:
        return None
    return _build_plan(_plan_key(cfg), scheduler, int(steps))


def _fit_update(new: torch.Tensor, xs: list[torch.Tensor], outs: list[torch.Tensor], name: str, i: int):
    """Coefficients (a, b) with ``new = sum_w a_w xs[-1-w] + sum_w b_w outs[-1-w]``, fewest terms."""
    scale = float(max(new.abs().max(), 1.0))
    for width in range(1, _MAX_WINDOW + 1):
        if width > len(xs):
            break
        cols = [xs[-1 - w] for w in range(width)] + [outs[-1 - w] for w in range(width)]
        basis = torch.stack(cols, dim=1)  # (K, 2 * width)
        # SVD-based: the basis is rank-deficient at the first steps (a sample is a combination of the
        # earlier ones), where the default QR driver can pick an unstable solution
        coef = torch.linalg.lstsq(basis, new[:, None], driver="gelsd").solution[:, 0]
        if float((basis @ coef - new).abs().max()) <= 1e-5 * scale:
            coef = torch.where(coef.abs() > 1e-9 * scale, coef, torch.zeros_like(coef))
            return tuple(coef[:width].tolist()), tuple(coef[width:].tolist())
    raise ValueError(f"scheduler {name!r}: step {i} does not combine at most {_MAX_WINDOW} past samples and outputs")


@functools.lru_cache(maxsize=64)
def _build_plan(key: tuple, name: str, steps: int) -> SamplingPlan:
    T, beta_start, beta_end, beta_schedule, prediction = key
    cfg = DiffusionConfig(num_train_steps=T, beta_start=beta_start, beta_end=beta_end, beta_schedule=beta_schedule,
                          prediction_type=prediction)
    sched = make_scheduler(cfg, name)
    sched.set_timesteps(steps, device="cpu")
    timesteps = sched.timesteps.clone()
    S = len(timesteps)
    K = S + 1  # coordinates: the start z, then the model output of each step
    x = torch.zeros(1, K, dtype=torch.float64)  # (1, K): a batch of one, as some schedulers expect
    x[0, 0] = 1.0
    xs, outs = [], []
    scales, a_list, b_list = [], [], []
    for i, t in enumerate(timesteps):
        z_in = sched.scale_model_input(x, t).double()
        scale = float(z_in[0, 0] / x[0, 0])
        if not torch.allclose(z_in, scale * x, rtol=1e-5, atol=1e-8):
            raise ValueError(f"scheduler {name!r}: scale_model_input is not a scalar multiple of the sample")
        out = torch.zeros(1, K, dtype=torch.float64)
        out[0, i + 1] = 1.0
        new = sched.step(out, t, x).prev_sample.double()
        xs.append(x[0])
        outs.append(out[0])
        a, b = _fit_update(new[0], xs, outs, name, i)
        scales.append(scale)
        a_list.append(a)
        b_list.append(b)
        x = new
    return SamplingPlan(scheduler=name, timesteps=timesteps, init_sigma=float(sched.init_noise_sigma),
                        scales=tuple(scales), a=tuple(a_list), b=tuple(b_list))


class GaussianDiffusion(nn.Module):
    """The diffusion process of ``cfg``: noising, the eps training loss, and CFG sampling.

    ``alphas_cumprod`` (T,) float32 equals the diffusers schedulers' own (same betas code).
    """

    def __init__(self, cfg: DiffusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        ref = make_scheduler(cfg, "ddpm")
        self.num_train_steps = int(cfg.num_train_steps)
        self.register_buffer("betas", ref.betas.detach().clone().float(), persistent=False)
        self.register_buffer("alphas_cumprod", ref.alphas_cumprod.detach().clone().float(), persistent=False)

    def q_sample(self, z0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``z_t = sqrt(a_t) z0 + sqrt(1 - a_t) noise``; z0, noise (B, ...); t (B,) int."""
        a = self.alphas_cumprod.to(z0.device)[t.to(z0.device).long()].to(z0.dtype)
        a = a.view(-1, *([1] * (z0.dim() - 1)))
        return a.sqrt() * z0 + (1.0 - a).sqrt() * noise

    def target(self, z0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the denoiser learns to predict at ``t`` (``cfg.prediction_type``): ``noise``, ``z0``
        or ``v = sqrt(a_t) noise - sqrt(1 - a_t) z0``."""
        kind = self.cfg.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "sample":
            return z0
        a = self.alphas_cumprod.to(z0.device)[t.to(z0.device).long()].to(z0.dtype)
        a = a.view(-1, *([1] * (z0.dim() - 1)))
        return a.sqrt() * noise - (1.0 - a).sqrt() * z0

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) weight of each sample's MSE: ones (``uniform``) or min-SNR-gamma, expressed for the
        prediction target (eps: ``min(snr, g) / snr``; z0: ``min(snr, g)``; v: ``min(snr, g) / (snr + 1)``)."""
        if self.cfg.loss_weighting == "uniform":
            return torch.ones(t.shape, device=t.device)
        a = self.alphas_cumprod.to(t.device)[t.long()].double()
        snr = a / (1.0 - a)
        w = snr.clamp(max=float(self.cfg.min_snr_gamma))
        kind = self.cfg.prediction_type
        if kind == "epsilon":
            w = w / snr
        elif kind == "v_prediction":
            w = w / (snr + 1.0)
        return w.float()

    def training_loss(self, denoiser: Callable[..., torch.Tensor], z0: torch.Tensor, text: torch.Tensor | None,
                      text_mask: torch.Tensor | None, lengths: torch.Tensor | None, cond_drop_prob: float = 0.1,
                      generator: torch.Generator | None = None, t: torch.Tensor | None = None,
                      noise: torch.Tensor | None = None, drop: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar MSE of the prediction target (:meth:`target`) at uniform random t, weighted per
        sample by :meth:`loss_weight`, averaged over valid latent frames.

        z0 (B, N', J', d_z) clean latents; the text condition of each sample is dropped
        (learned null token) with probability ``cond_drop_prob``. ``t`` (B,) int, ``noise`` (like
        z0) and ``drop`` (B,) bool, when given, are used instead of draws from ``generator``
        (e.g. per-sample keyed draws, so a sample's loss does not depend on its batch).
        """
        if not isinstance(z0, torch.Tensor) or z0.dim() != 4:
            raise ValueError(f"z0 must be a (B, N', J', d_z) tensor, got {getattr(z0, 'shape', type(z0))}")
        if not 0.0 <= cond_drop_prob <= 1.0:
            raise ValueError(f"cond_drop_prob must lie in [0, 1], got {cond_drop_prob}")
        _check_inputs(z0.shape, text, text_mask, lengths)
        B, n = z0.shape[:2]
        device = z0.device
        gen_device = generator.device if generator is not None else device
        if t is None:
            t = torch.randint(0, self.num_train_steps, (B,), generator=generator, device=gen_device)
        if noise is None:
            noise = _randn(z0.shape, generator, device, z0.dtype)
        if drop is None:
            drop = torch.rand(B, generator=generator, device=gen_device) < cond_drop_prob
        if t.shape != (B,) or noise.shape != z0.shape or drop.shape != (B,):
            raise ValueError(f"training_loss: t {tuple(t.shape)} and drop {tuple(drop.shape)} must be ({B},), "
                             f"noise {tuple(noise.shape)} must be {tuple(z0.shape)}")
        t, noise, drop = t.to(device), noise.to(device=device, dtype=z0.dtype), drop.to(device)
        z_t = self.q_sample(z0, t, noise)
        pred = denoiser(z_t, t, text, text_mask, lengths, drop if text is not None else None)
        if pred.shape != z0.shape:
            raise ValueError(f"denoiser returned {tuple(pred.shape)}, expected {tuple(z0.shape)}")
        mask = frame_mask(lengths, n, batch=B, device=device).to(torch.float32)
        target = self.target(z0, noise, t)
        err = (pred.float() - target.float()).pow(2).mean(dim=(2, 3))  # (B, N')
        if self.cfg.loss_weighting != "uniform":
            err = err * self.loss_weight(t).view(B, 1)
        return (err * mask).sum() / mask.sum().clamp_min(1.0)

    @torch.no_grad()
    def sample(self, denoiser: Callable[..., torch.Tensor], shape: tuple[int, int, int, int],
               text: torch.Tensor | None, text_mask: torch.Tensor | None, lengths: torch.Tensor | None,
               steps: int | None = None, guidance: float | None = None, scheduler=None,
               generator: torch.Generator | None = None, progress: bool = False,
               device: torch.device | str | None = None, reuse_text: bool = True,
               cuda_graph: bool = False, pad_frames_to: int | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        """Draw z0 (B, N', J', d_z) by reverse diffusion from ``z_T ~ N(0, I)``.

        ``scheduler``: a name in :data:`SCHEDULERS`, a diffusers scheduler instance, or None
        (``cfg.scheduler``); ``steps`` and ``guidance`` default to the config's. With text,
        ``eps = eps_u + guidance * (eps_c - eps_u)`` (guidance 1: conditional only); with
        ``text=None``, unconditional. The same ``generator`` state gives the same result.
        With ``reuse_text`` and a denoiser that has ``encode_text`` (returning a context for the
        ``text_context=`` keyword of its forward), the text keys/values are computed once.

        Lengths and the text mask are validated here, once (the only host synchronisations of a
        run); the steps then never wait for the device. Schedulers named in
        :data:`PLANNED_SCHEDULERS` run from a precomputed :class:`SamplingPlan` (no diffusers
        call per step); others (and scheduler instances) step through diffusers.

        ``cuda_graph``: capture the whole run (text keys/values, every step with its CFG batch
        and update) as one CUDA graph, once per (denoiser, batch, shape, text length, steps,
        scheduler, guidance), then replay it with the new noise and text copied into its static
        inputs. Needs CUDA tensors and a planned scheduler (``ValueError`` otherwise).

        ``pad_frames_to``: run the denoiser on this many latent frames (>= N'), the extra ones
        padding (zero noise, masked out by ``lengths``, which default to N'), and return the first
        N': the same draws and, on the valid frames, the same result as the unpadded run (to float
        rounding), so a compiled denoiser serves many lengths with one shape. ``noise``: the start
        z_T (``shape``, float32) to use instead of a draw from ``generator``.
        """
        steps = self.cfg.sample_steps if steps is None else steps
        guidance = self.cfg.guidance if guidance is None else guidance
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be a positive int, got {steps!r}")
        if not isinstance(guidance, (int, float)) or isinstance(guidance, bool) or guidance != guidance:
            raise ValueError(f"guidance must be a finite number, got {guidance!r}")
        if len(shape) != 4:
            raise ValueError(f"shape must be (B, N', J', d_z), got {shape}")
        if steps > self.num_train_steps:
            raise ValueError(f"steps ({steps}) exceeds the {self.num_train_steps} training steps")
        if device is None:
            device = text.device if text is not None else _module_device(denoiser)
        device = torch.device(device)
        if device.type == "cuda" and device.index is None:  # "cuda" is the current CUDA device
            device = torch.device("cuda", torch.cuda.current_device())
        _check_inputs(shape, text, text_mask, lengths)
        # values, once per run (never per step: that would stall every step on the device)
        validate_lengths(lengths, shape[0], shape[1], unit="N'")
        validate_text_mask(text_mask)
        guidance = float(guidance)
        plan = None
        if scheduler is None or isinstance(scheduler, str):
            plan = sampling_plan(self.cfg, self.cfg.scheduler if scheduler is None else scheduler, steps)
        if cuda_graph:
            if device.type != "cuda":
                raise ValueError(f"cuda_graph=True captures the sampling run as a CUDA graph and needs a CUDA "
                                 f"device; the model is on {device}")
            if plan is None:
                raise ValueError(f"cuda_graph=True needs one of the schedulers {', '.join(PLANNED_SCHEDULERS)}, "
                                 f"got {scheduler!r}")
        if noise is None:
            noise = _randn(tuple(shape), generator, device)
        elif not isinstance(noise, torch.Tensor) or tuple(noise.shape) != tuple(shape) or noise.device != device:
            raise ValueError(f"noise must be a tensor of shape {tuple(shape)} on {device}, got "
                             f"{getattr(noise, 'shape', type(noise).__name__)}")
        if pad_frames_to is not None and int(pad_frames_to) != shape[1]:
            if isinstance(pad_frames_to, bool) or int(pad_frames_to) < shape[1]:
                raise ValueError(f"pad_frames_to must be >= N'={shape[1]}, got {pad_frames_to!r}")
            if lengths is None:
                lengths = torch.full((shape[0],), shape[1], dtype=torch.long, device=device)
            extra = int(pad_frames_to) - shape[1]
            z = self.sample(denoiser, (shape[0], int(pad_frames_to), shape[2], shape[3]), text, text_mask, lengths,
                            steps=steps, guidance=guidance, scheduler=scheduler, generator=generator,
                            progress=progress, device=device,
                            reuse_text=reuse_text, cuda_graph=cuda_graph,
                            noise=torch.cat([noise, noise.new_zeros(shape[0], extra, *shape[2:])], dim=1))
            return z[:, :shape[1]]
        if plan is not None:
            if cuda_graph:
                return self._sample_graphed(denoiser, plan, noise, text, text_mask, lengths, guidance, reuse_text)
            return _run_plan(denoiser, plan, noise, text, text_mask, lengths, guidance, reuse_text, progress)
        return self._sample_diffusers(denoiser, noise, text, text_mask, lengths, steps, guidance, scheduler,
                                      generator, progress, device, reuse_text)

    def _sample_graphed(self, denoiser, plan: SamplingPlan, noise: torch.Tensor, text, text_mask, lengths,
                        guidance: float, reuse_text: bool) -> torch.Tensor:
        """:func:`_run_plan` captured as one CUDA graph (cached per configuration), replayed."""
        # cached per denoiser outside it (dies with it; a deepcopy of the denoiser never meets a
        # CUDAGraph); the parameters' addresses invalidate a graph whose weights were replaced rather
        # than updated in place, the schedule one whose plan's coefficients differ
        graphs = cuda_graphs(denoiser)
        params = tuple(p.data_ptr() for p in denoiser.parameters()) if hasattr(denoiser, "parameters") else ()
        key = (plan.scheduler, plan.num_steps, _plan_key(self.cfg), tuple(noise.shape), noise.dtype, noise.device,
               guidance, reuse_text,
               None if text is None else tuple(text.shape), None if text is None else text.dtype,
               text_mask is None, None if lengths is None else lengths.dtype, params,
               getattr(denoiser, "backend", None), torch.is_autocast_enabled("cuda"),
               torch.get_autocast_dtype("cuda"))
        entry = graphs.get(key)
        if entry is None:
            batch = noise.shape[0] * (2 if text is not None and guidance != 1.0 else 1)
            static = {"noise": noise.clone(), "text": None if text is None else text.clone(),
                      "mask": None if text_mask is None else text_mask.clone(),
                      "lengths": None if lengths is None else lengths.clone(),
                      # host-to-device copies cannot be captured: the timesteps go over first
                      "t_table": plan.timesteps.to(noise.device).view(-1, 1).expand(-1, batch)}

            def run() -> torch.Tensor:
                return _run_plan(denoiser, plan, static["noise"], static["text"], static["mask"], static["lengths"],
                                 guidance, reuse_text, False, t_table=static["t_table"])

            replay, out = _capture_graph(run, noise.device)
            entry = graphs[key] = (replay, static, out)
        replay, static, out = entry
        static["noise"].copy_(noise)
        for name, value in (("text", text), ("mask", text_mask), ("lengths", lengths)):
            if value is not None:
                static[name].copy_(value)
        replay()
        return out.clone()

    def _sample_diffusers(self, denoiser, noise, text, text_mask, lengths, steps, guidance, scheduler, generator,
                          progress, device, reuse_text) -> torch.Tensor:
        """The sampling loop through a diffusers scheduler's ``step`` (schedulers without a plan)."""
        if scheduler is None or isinstance(scheduler, str):
            scheduler = make_scheduler(self.cfg, scheduler)
        scheduler.set_timesteps(steps, device=device)
        step_params = inspect.signature(scheduler.step).parameters
        step_kwargs = {"generator": generator} if "generator" in step_params else {}
        cfg_batch, text_in, mask_in, len_in, drop_in = _cfg_inputs(text, text_mask, lengths, guidance, noise.shape[0])
        context = _text_context(denoiser, text_in, mask_in, drop_in, reuse_text)
        z = noise * scheduler.init_noise_sigma
        for t in tqdm(scheduler.timesteps, desc="sampling", disable=not progress, leave=False):
            z_in = scheduler.scale_model_input(z, t)
            if cfg_batch:
                z_in = torch.cat([z_in, z_in])
            t_in = t.reshape(1).to(device).repeat(z_in.shape[0])
            eps = _guided(denoiser, z_in, t_in, context, text_in, mask_in, len_in, drop_in, cfg_batch, guidance)
            z = scheduler.step(eps, t, z, **step_kwargs).prev_sample
        return z


_CUDA_GRAPHS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cuda_graphs(denoiser) -> dict:
    """The CUDA graphs that ``sample(..., cuda_graph=True)`` captured for ``denoiser``: a dict from
    the run's configuration to (replay, static inputs, output). Kept outside the module, so that
    copying or pickling the denoiser never meets a ``CUDAGraph``, and dropped with the denoiser;
    ``.clear()`` frees their memory pools."""
    graphs = _CUDA_GRAPHS.get(denoiser)
    if graphs is None:
        graphs = _CUDA_GRAPHS[denoiser] = {}
    return graphs


def _capture_graph(run: Callable[[], torch.Tensor], device: torch.device):
    """Warm ``run`` up on a side stream, capture it as a CUDA graph; returns (replay, output)."""
    # autocast's cache of cast weights would be freed when the caller's autocast region ends while
    # the graph still reads it: no cache while warming up and capturing (casts become graph nodes)
    cache = torch.is_autocast_cache_enabled()
    torch.set_autocast_cache_enabled(False)
    try:
        # the run's device made current, and a capture stream on it: torch.cuda.graph's default
        # capture stream belongs to whichever device was current when it was first made
        with torch.cuda.device(device):
            side = torch.cuda.Stream(device=device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                run()  # warm-up: compiles and autotunes kernels, loads modules, settles the allocator
            torch.cuda.current_stream(device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=side):
                out = run()
    finally:
        torch.set_autocast_cache_enabled(cache)
    return graph.replay, out


def _cfg_inputs(text, text_mask, lengths, guidance: float, B: int):
    """(cfg_batch, text, mask, lengths, drop) of the denoiser batch: with text and guidance != 1, the
    conditional half then the unconditional half (drop_text True) as one batch of 2B."""
    if text is None or guidance == 1.0:
        return False, text, text_mask, lengths, None
    device = text.device
    mask_in = torch.cat([text_mask, text_mask]) if text_mask is not None else None
    len_in = torch.cat([lengths, lengths]) if lengths is not None else None
    drop_in = torch.cat([torch.zeros(B, dtype=torch.bool, device=device), torch.ones(B, dtype=torch.bool, device=device)])
    return True, torch.cat([text, text]), mask_in, len_in, drop_in


def _text_context(denoiser, text_in, mask_in, drop_in, reuse_text: bool):
    """The denoiser's text keys/values for all steps when it offers ``encode_text`` (else None)."""
    if reuse_text and text_in is not None and callable(getattr(denoiser, "encode_text", None)):
        return denoiser.encode_text(text_in, mask_in, drop_in)
    return None


def _guided(denoiser, z_in, t_in, context, text_in, mask_in, len_in, drop_in, cfg_batch: bool,
            guidance: float, film: torch.Tensor | None = None) -> torch.Tensor:
    """One denoiser call on the (CFG) batch -> the guided prediction (B, N', J', d_z) float32.
    ``film``: the step's FiLM parameters (1, F, 2, D) from the denoiser's ``film_parameters``
    (given only with a text context; the CFG halves are then run as shared halves)."""
    if film is not None:
        eps = denoiser(z_in, t_in, lengths=len_in, text_context=context, film=film, shared_halves=cfg_batch).float()
    elif context is not None:
        eps = denoiser(z_in, t_in, lengths=len_in, text_context=context).float()
    else:
        eps = denoiser(z_in, t_in, text_in, mask_in, len_in, drop_in).float()
    if cfg_batch:
        eps_c, eps_u = eps.chunk(2)
        eps = eps_u + guidance * (eps_c - eps_u)
    return eps


def _run_plan(denoiser, plan: SamplingPlan, noise: torch.Tensor, text, text_mask, lengths, guidance: float,
              reuse_text: bool, progress: bool, t_table: torch.Tensor | None = None) -> torch.Tensor:
    """Sample with a :class:`SamplingPlan`: only tensor arithmetic on the device, no host reads, no
    branch on a tensor's value (so the whole run can be captured as a CUDA graph). ``t_table``:
    the (S, batch) timesteps already on the device (else copied there once)."""
    B = noise.shape[0]
    cfg_batch, text_in, mask_in, len_in, drop_in = _cfg_inputs(text, text_mask, lengths, guidance, B)
    context = _text_context(denoiser, text_in, mask_in, drop_in, reuse_text)
    batch = 2 * B if cfg_batch else B
    if t_table is None:
        t_table = plan.timesteps.to(noise.device).view(-1, 1).expand(-1, batch)  # (S, batch), one copy per run
    # the FiLM parameters of every step at once, where the denoiser offers them (with reused text)
    film = None
    if context is not None and callable(getattr(denoiser, "film_parameters", None)):
        film = denoiser.film_parameters(t_table[:, 0])  # (S, F, 2, D)
    # a denoiser with guided_steps (AOTDenoiser) builds the CFG halves from z and combines them
    # itself, its inputs other than z and t checked and flattened once per run
    guided_steps = None
    if cfg_batch and film is not None and callable(getattr(denoiser, "guided_steps", None)):
        guided_steps = denoiser.guided_steps(noise, t_table[0, :B], lengths, context, film, guidance)  # z's shape
    z = noise * plan.init_sigma
    zs: list[torch.Tensor] = [z]
    outs: list[torch.Tensor] = []
    keep = plan.window
    # a compiled denoiser that says so (SignSALD.compiled_denoiser) sees inputs of one shape at
    # every step of a run: after step 0 has picked (or compiled) its graph, Dynamo checks only the
    # guards that tell its cached graphs apart
    steady = bool(getattr(denoiser, "sald_steady_steps", False))
    with contextlib.ExitStack() as stack:
        for i in tqdm(range(plan.num_steps), desc="sampling", disable=not progress, leave=False):
            if i == 1 and steady:
                stack.enter_context(torch.compiler.set_stance("default", skip_guard_eval_unsafe=True))
            scale = plan.scales[i]
            z_in = z if scale == 1.0 else z * scale
            if guided_steps is not None:  # the whole guided step in one call: halves built and combined inside
                outs.append(guided_steps(z_in, t_table[i, :B], i))
            else:
                if cfg_batch:
                    z_in = torch.cat([z_in, z_in])
                outs.append(_guided(denoiser, z_in, t_table[i], context, text_in, mask_in, len_in, drop_in,
                                    cfg_batch, guidance, None if film is None else film[i:i + 1]))
            a, b = plan.a[i], plan.b[i]
            z = z * a[0] if a[0] != 1.0 else z.clone()
            for w, c in enumerate(a[1:], start=1):
                if c != 0.0:
                    z.add_(zs[-1 - w], alpha=c)
            for w, c in enumerate(b):
                if c != 0.0:
                    z.add_(outs[-1 - w], alpha=c)
            zs.append(z)
            del zs[:-keep], outs[:-keep]
    return z

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

import inspect
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .config import DiffusionConfig
from .frames import frame_mask

__all__ = ["SCHEDULERS", "make_scheduler", "GaussianDiffusion"]


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
    B, n = shape[0], shape[1]
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
        if bool((lengths < 1).any()) or bool((lengths > n).any()):
            raise ValueError(f"lengths must lie in [1, {n}] latent frames, got {lengths.tolist()}")


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
               device: torch.device | str | None = None, reuse_text: bool = True) -> torch.Tensor:
        """Draw z0 (B, N', J', d_z) by reverse diffusion from ``z_T ~ N(0, I)``.

        ``scheduler``: a name in :data:`SCHEDULERS`, a diffusers scheduler instance, or None
        (``cfg.scheduler``); ``steps`` and ``guidance`` default to the config's. With text,
        ``eps = eps_u + guidance * (eps_c - eps_u)`` (guidance 1: conditional only); with
        ``text=None``, unconditional. The same ``generator`` state gives the same result.
        With ``reuse_text`` and a denoiser that has ``encode_text`` (returning a context for the
        ``text_context=`` keyword of its forward), the text keys/values are computed once.
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
        _check_inputs(shape, text, text_mask, lengths)
        if scheduler is None or isinstance(scheduler, str):
            scheduler = make_scheduler(self.cfg, scheduler)
        scheduler.set_timesteps(steps, device=device)
        step_params = inspect.signature(scheduler.step).parameters
        step_kwargs = {"generator": generator} if "generator" in step_params else {}

        B = shape[0]
        cfg_batch = text is not None and float(guidance) != 1.0
        if cfg_batch:
            text_in = torch.cat([text, text])
            mask_in = torch.cat([text_mask, text_mask]) if text_mask is not None else None
            len_in = torch.cat([lengths, lengths]) if lengths is not None else None
            drop_in = torch.cat([torch.zeros(B, dtype=torch.bool, device=device),
                                 torch.ones(B, dtype=torch.bool, device=device)])
        else:
            text_in, mask_in, len_in, drop_in = text, text_mask, lengths, None

        # text keys/values once for all steps when the denoiser offers it (sald_fast.Denoiser)
        context = None
        if reuse_text and text_in is not None and callable(getattr(denoiser, "encode_text", None)):
            context = denoiser.encode_text(text_in, mask_in, drop_in)

        z = _randn(tuple(shape), generator, device) * scheduler.init_noise_sigma
        for t in tqdm(scheduler.timesteps, desc="sampling", disable=not progress, leave=False):
            z_in = scheduler.scale_model_input(z, t)
            if cfg_batch:
                z_in = torch.cat([z_in, z_in])
            t_in = t.reshape(1).to(device).repeat(z_in.shape[0])
            if context is not None:
                eps = denoiser(z_in, t_in, lengths=len_in, text_context=context).float()
            else:
                eps = denoiser(z_in, t_in, text_in, mask_in, len_in, drop_in).float()
            if cfg_batch:
                eps_c, eps_u = eps.chunk(2)
                eps = eps_u + float(guidance) * (eps_c - eps_u)
            z = scheduler.step(eps, t, z, **step_kwargs).prev_sample
        return z

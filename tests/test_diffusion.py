"""Diffusion: schedule, noising, training loss, and guided sampling through every scheduler."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sald_fast.config import DiffusionConfig
from sald_fast.diffusion import SCHEDULERS, GaussianDiffusion, make_scheduler
from sald_fast.frames import frame_mask

# diffusers' sigma schedulers run numpy on torch tensors (NumPy 2 deprecation noise, not ours)
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

SHAPE = (2, 3, 7, 4)  # B, N', J', d_z


class ToyDenoiser(nn.Module):
    """The Denoiser's forward signature with a few parameters; records its calls."""

    def __init__(self, d: int = 4, text_dim: int = 8) -> None:
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.text_proj = nn.Linear(text_dim, d)
        self.null = nn.Parameter(torch.zeros(d))
        self.calls: list[dict] = []

    def forward(self, z_t, t, text, text_mask, lengths, drop_text):
        self.calls.append({"batch": z_t.shape[0], "t": t.clone(), "drop": None if drop_text is None else drop_text.clone(),
                           "lengths": None if lengths is None else lengths.clone()})
        cond = torch.zeros(z_t.shape[0], z_t.shape[-1]) if text is None else self.text_proj(text.mean(1))
        if drop_text is not None:
            cond = torch.where(drop_text[:, None], self.null.expand_as(cond), cond)
        return 0.1 * self.lin(z_t) + cond[:, None, None, :] + 1e-4 * t.float().view(-1, 1, 1, 1)


@pytest.fixture(scope="module")
def diffusion() -> GaussianDiffusion:
    return GaussianDiffusion(DiffusionConfig())


def test_linear_schedule_matches_independent_formula(diffusion):
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    acp = np.cumprod(1.0 - betas)
    np.testing.assert_allclose(diffusion.betas.numpy(), betas, rtol=1e-6)
    np.testing.assert_allclose(diffusion.alphas_cumprod.numpy(), acp, rtol=1e-4)
    for name in ("ddim", "dpm++", "euler"):
        sched = make_scheduler(DiffusionConfig(), name)
        assert sched.config.num_train_timesteps == 1000 and sched.config.beta_schedule == "linear"
        assert sched.config.prediction_type == "epsilon"
        np.testing.assert_allclose(sched.alphas_cumprod.numpy(), acp, rtol=1e-4)
    assert make_scheduler(DiffusionConfig(), "ddim").config.clip_sample is False


def test_q_sample_statistics(diffusion):
    g = torch.Generator().manual_seed(0)
    z0 = torch.full((20000, 1, 1, 2), 1.5)
    for t_val in (0, 250, 999):
        t = torch.full((z0.shape[0],), t_val)
        zt = diffusion.q_sample(z0, t, torch.randn(z0.shape, generator=g))
        a = float(np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))[t_val])
        assert abs(zt.mean().item() - 1.5 * a ** 0.5) < 0.03
        assert abs(zt.std().item() - (1 - a) ** 0.5) < 0.03


def test_training_loss_finite_backprop_and_masked(diffusion):
    torch.manual_seed(0)
    den = ToyDenoiser()
    z0 = torch.randn(SHAPE)
    text, mask = torch.randn(2, 5, 8), torch.ones(2, 5, dtype=torch.bool)
    lengths = torch.tensor([3, 1])
    loss = diffusion.training_loss(den, z0, text, mask, lengths, 0.5, torch.Generator().manual_seed(1))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None for p in (den.lin.weight, den.lin.bias))
    # the same generator state -> the same t, noise, drop; the loss ignores frames past lengths
    den2 = ToyDenoiser()
    den2.load_state_dict(den.state_dict())
    g = torch.Generator().manual_seed(1)
    z0_poisoned = z0.clone()
    z0_poisoned[1, 1:] = 1e3  # padded latent frames of sample 1
    den_out = {}

    def spy(z_t, t, *args):
        out = den2(z_t, t, *args)
        den_out["eps"] = out
        return out

    loss2 = diffusion.training_loss(spy, z0_poisoned, text, mask, lengths, 0.5, g)
    # loss2 differs from loss only through the denoiser's output on padded frames; check it by hand
    noise_g = torch.Generator().manual_seed(1)
    t = torch.randint(0, 1000, (2,), generator=noise_g)
    noise = torch.randn(SHAPE, generator=noise_g)
    err = (den_out["eps"] - noise).pow(2).mean(dim=(2, 3))
    valid = frame_mask(lengths, 3, batch=2, device=torch.device("cpu"))
    torch.testing.assert_close(loss2, err[valid].mean())
    assert den.calls[-1]["drop"] is not None and den.calls[-1]["t"].shape == (2,)


def test_cond_drop_probability(diffusion):
    den = ToyDenoiser()
    z0 = torch.randn(4000, 1, 1, 4)
    text = torch.randn(4000, 2, 8)
    diffusion.training_loss(den, z0, text, None, None, 0.25, torch.Generator().manual_seed(0))
    frac = den.calls[-1]["drop"].float().mean().item()
    assert abs(frac - 0.25) < 0.03
    diffusion.training_loss(den, z0[:8], text[:8], None, None, 0.0)
    assert not den.calls[-1]["drop"].any()
    diffusion.training_loss(den, z0[:8], text[:8], None, None, 1.0)
    assert den.calls[-1]["drop"].all()


def test_sample_deterministic_per_seed(diffusion):
    torch.manual_seed(0)
    den = ToyDenoiser()
    text = torch.randn(2, 5, 8)
    run = lambda seed: diffusion.sample(den, SHAPE, text, None, None, steps=5, guidance=2.5,  # noqa: E731
                                        generator=torch.Generator().manual_seed(seed))
    a, b, c = run(0), run(0), run(1)
    assert a.shape == SHAPE and torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_cfg_is_one_batched_forward(diffusion):
    den = ToyDenoiser()
    text = torch.randn(2, 5, 8)
    lengths = torch.tensor([3, 2])
    diffusion.sample(den, SHAPE, text, None, lengths, steps=4, guidance=3.0, scheduler="ddim",
                     generator=torch.Generator().manual_seed(0))
    assert len(den.calls) == 4
    for call in den.calls:
        assert call["batch"] == 4
        assert call["drop"].tolist() == [False, False, True, True]
        assert call["lengths"].tolist() == [3, 2, 3, 2]
    assert den.calls[0]["t"].tolist() == [999] * 4  # trailing spacing starts from pure noise


def test_guidance_formula(diffusion):
    """eps_u + w (eps_c - eps_u): with w = 1 it equals conditional-only sampling, with w = 0
    unconditional-only (text dropped)."""
    torch.manual_seed(0)
    den = ToyDenoiser()
    text = torch.randn(2, 5, 8)
    g = lambda: torch.Generator().manual_seed(4)  # noqa: E731

    def cond_only(z, t, text_, mask, lengths, drop):
        return den(z, t, text, mask, lengths, torch.zeros(z.shape[0], dtype=torch.bool))

    def uncond_only(z, t, text_, mask, lengths, drop):
        return den(z, t, text, mask, lengths, torch.ones(z.shape[0], dtype=torch.bool))

    w1 = diffusion.sample(den, SHAPE, text, None, None, steps=3, guidance=1.0, generator=g())
    ref1 = diffusion.sample(cond_only, SHAPE, text, None, None, steps=3, guidance=1.0, generator=g())
    torch.testing.assert_close(w1, ref1)
    w0 = diffusion.sample(den, SHAPE, text, None, None, steps=3, guidance=0.0, generator=g())
    ref0 = diffusion.sample(uncond_only, SHAPE, text, None, None, steps=3, guidance=1.0, generator=g())
    torch.testing.assert_close(w0, ref0, rtol=1e-5, atol=1e-5)


def _point_mass_oracle(target: torch.Tensor, acp: torch.Tensor):
    """The exact eps for data = a single point ``target``, at any (possibly fractional) t."""
    log_sigma = 0.5 * torch.log((1 - acp.double()) / acp.double())

    def oracle(z, t, text, mask, lengths, drop):
        tf = t.double()
        lo = tf.floor().long().clamp(0, len(acp) - 1)
        hi = tf.ceil().long().clamp(0, len(acp) - 1)
        ls = log_sigma[lo] + (tf - lo.double()) * (log_sigma[hi] - log_sigma[lo])
        a = (1.0 / (1.0 + torch.exp(2 * ls))).float().view(-1, 1, 1, 1)
        x0 = target.repeat(z.shape[0] // target.shape[0], 1, 1, 1)
        return (z - a.sqrt() * x0) / (1 - a).sqrt()

    return oracle


@pytest.mark.parametrize("name", list(SCHEDULERS.keys()))
def test_every_scheduler_recovers_point_mass(diffusion, name):
    """With the exact eps of a point-mass data distribution, every scheduler lands on the point
    (PNDM's linear multistep warm-up is inexact on 3 uneven steps, so it gets a looser bound)."""
    target = torch.linspace(-1.0, 1.0, int(np.prod(SHAPE))).view(SHAPE)
    oracle = _point_mass_oracle(target, diffusion.alphas_cumprod)
    text = torch.randn(2, 5, 8)
    for steps in (3, 10):
        z = diffusion.sample(oracle, SHAPE, text, None, None, steps=steps, guidance=2.0, scheduler=name,
                             generator=torch.Generator().manual_seed(0))
        assert z.shape == SHAPE
        tol = 2e-2 if (name == "pndm" and steps == 3) else 1e-3
        assert (z - target).abs().max().item() < tol, (name, steps)


def test_scheduler_instance_and_config_default(diffusion):
    den = ToyDenoiser()
    text = torch.randn(2, 5, 8)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    by_name = diffusion.sample(den, SHAPE, text, None, None, steps=3, scheduler="dpm++", generator=g())
    by_obj = diffusion.sample(den, SHAPE, text, None, None, steps=3, scheduler=make_scheduler(DiffusionConfig(), "dpm++"),
                              generator=g())
    # by name: the precomputed plan; an instance: diffusers' own step -- the same update in fp32
    torch.testing.assert_close(by_name, by_obj, rtol=1e-5, atol=1e-4 * float(by_obj.abs().max()))
    default = diffusion.sample(den, SHAPE, text, None, None, steps=3, generator=g())
    ddim = diffusion.sample(den, SHAPE, text, None, None, steps=3, scheduler="ddim", generator=g())
    assert torch.equal(default, ddim)


def test_unconditional_sampling(diffusion):
    den = ToyDenoiser()
    z = diffusion.sample(den, SHAPE, None, None, None, steps=2, generator=torch.Generator().manual_seed(0))
    assert z.shape == SHAPE and den.calls[-1]["batch"] == 2 and den.calls[-1]["drop"] is None


def test_bad_arguments(diffusion):
    den = ToyDenoiser()
    text = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match="unknown scheduler 'nope'.*ddim.*dpm\\+\\+"):
        diffusion.sample(den, SHAPE, text, None, None, steps=2, scheduler="nope")
    with pytest.raises(ValueError, match="unknown scheduler"):
        make_scheduler(DiffusionConfig(), "nope")
    with pytest.raises(ValueError, match="steps"):
        diffusion.sample(den, SHAPE, text, None, None, steps=0)
    with pytest.raises(ValueError, match="text must be"):
        diffusion.sample(den, SHAPE, torch.randn(3, 5, 8), None, None, steps=2)
    with pytest.raises(ValueError, match="lengths"):
        diffusion.sample(den, SHAPE, text, None, torch.tensor([4, 1]), steps=2)
    with pytest.raises(ValueError, match="z0 must be"):
        diffusion.training_loss(den, torch.randn(2, 3, 4), text, None, None)
    with pytest.raises(ValueError, match="cond_drop_prob"):
        diffusion.training_loss(den, torch.randn(SHAPE), text, None, None, cond_drop_prob=1.5)

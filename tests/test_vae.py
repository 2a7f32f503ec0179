"""SkeletonVAE: shapes, bad input, masking, determinism, loss terms against independent
formulas, building blocks against dense oracles, and overfitting a tiny batch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sald_fast import ops
from sald_fast.config import VAEConfig, preset
from sald_fast.features import features_to_positions, smplx_to_features
from sald_fast.skeleton import SIGNING_SKELETON, pooling_hierarchy
from sald_fast.vae import STConv, STPool, STUnpool, SkeletonVAE, upsample_time_linear

J = SIGNING_SKELETON.num_joints
MICRO = dict(channels=(8, 8, 8), latent_dim=4)


def micro_vae(num_atoms: int = 7, seed: int = 0, **kw) -> SkeletonVAE:
    torch.manual_seed(seed)
    return SkeletonVAE(VAEConfig(num_atoms=num_atoms, **{**MICRO, **kw}))


def smooth_features(B: int, N: int, seed: int = 0) -> torch.Tensor:
    """Unnormalised features (B, N, 44, 9) of a smooth random motion (sinusoidal axis-angles)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(N, dtype=torch.float32)[None, :, None, None]
    freq = 0.02 + 0.08 * torch.rand(B, 1, 52, 3, generator=g)
    phase = 2 * math.pi * torch.rand(B, 1, 52, 3, generator=g)
    amp = 0.1 + 0.4 * torch.rand(B, 1, 52, 3, generator=g)
    aa = amp * torch.sin(2 * math.pi * freq * t + phase)
    transl = 0.05 * torch.sin(0.2 * t[..., 0, 0, None] + 6 * torch.rand(B, 1, 3, generator=g))
    return smplx_to_features(aa[:, :, 0], aa[:, :, 1:22], aa[:, :, 22:37], aa[:, :, 37:52], transl)


# -- shapes and dtypes ---------------------------------------------------------------------
@pytest.mark.parametrize("num_atoms,B,N", [(7, 1, 4), (7, 3, 16), (7, 1, 36), (7, 3, 36), (5, 3, 16), (5, 1, 36),
                                           (9, 1, 4), (9, 3, 36)])
def test_shapes_and_dtypes(num_atoms, B, N):
    vae = micro_vae(num_atoms)
    x = torch.randn(B, N, J, 9)
    out = vae(x)
    assert out["recon"].shape == (B, N, J, 9)
    for k in ("mu", "logvar", "z"):
        assert out[k].shape == (B, N // 4, num_atoms, 4), k
    for v in out.values():
        assert v.dtype == torch.float32 and bool(torch.isfinite(v).all())
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (B, N // 4, num_atoms, 4)
    assert vae.decode(mu).shape == (B, N, J, 9)
    losses = vae.loss(x, out)
    assert set(losses) == {"total", "feat", "pos", "vel", "kl"}
    assert all(v.shape == () and bool(torch.isfinite(v)) for v in losses.values())


def test_dtype_handling():
    vae = micro_vae()
    x = torch.randn(2, 8, J, 9)
    assert vae(x.half())["recon"].dtype == torch.float32  # cast to the parameters' dtype
    vae64 = micro_vae().double()
    out = vae64(x.double())
    assert out["recon"].dtype == torch.float64 and out["mu"].dtype == torch.float64
    assert vae64.loss(x.double(), out)["total"].dtype == torch.float32


def test_state_dict_contents_and_round_trip():
    offsets = SIGNING_SKELETON.offsets * 1.1
    vae = SkeletonVAE(VAEConfig(**MICRO), offsets=offsets)
    vae.normalizer.fit(smooth_features(2, 8))
    vae.latent_scale.fill_(0.5)
    sd = vae.state_dict()
    for key in ("normalizer.mean", "normalizer.std", "offsets", "latent_scale"):
        assert key in sd, key
    assert not any(k.endswith(("indptr", "indices", ".pool", ".unpool")) for k in sd)  # derived, not stored
    fresh = SkeletonVAE(VAEConfig(**MICRO))
    fresh.load_state_dict(sd, strict=True)
    assert torch.allclose(fresh.offsets, torch.as_tensor(offsets))
    assert float(fresh.latent_scale) == 0.5
    x = torch.randn(1, 8, J, 9)
    vae.eval(), fresh.eval()
    assert torch.equal(vae(x)["recon"], fresh(x)["recon"])


def test_paper_preset_parameter_count():
    """The paper preset's VAE has exactly the 2,832,908 parameters the README states (the paper's
    Table 2 says 2.81M); any change to its layers changes this figure and must update the README."""
    n = SkeletonVAE(preset("paper").vae).num_parameters()
    assert n == 2_832_908, n
    vae = micro_vae()
    assert vae.num_parameters() == sum(p.numel() for p in vae.parameters())


# -- bad input -----------------------------------------------------------------------------
@pytest.mark.parametrize("N,expected", [(30, "28 or 32"), (2, "4"), (17, "16 or 20")])
def test_frames_not_multiple_of_4_rejected(N, expected):
    vae = micro_vae()
    with pytest.raises(ValueError, match=rf"N={N}.*multiple of 4.*{expected}"):
        vae(torch.randn(1, N, J, 9))
    with pytest.raises(ValueError, match="multiple of 4"):
        vae.encode(torch.randn(1, N, J, 9))


def test_bad_inputs_named():
    vae = micro_vae()
    with pytest.raises(ValueError, match=r"\(B, N, 44, 9\).*\(8, 44, 9\)"):
        vae(torch.randn(8, J, 9))
    with pytest.raises(ValueError, match=r"\(1, 8, 43, 9\)"):
        vae(torch.randn(1, 8, 43, 9))
    with pytest.raises(ValueError, match=r"\(1, 8, 44, 6\)"):
        vae(torch.randn(1, 8, J, 6))
    with pytest.raises(TypeError, match="torch.int64"):
        vae(torch.zeros(1, 8, J, 9, dtype=torch.long))
    with pytest.raises(TypeError, match="ndarray"):
        vae(np.zeros((1, 8, J, 9), np.float32))
    with pytest.raises(ValueError, match="at least one"):
        vae(torch.randn(0, 8, J, 9))
    with pytest.raises(ValueError, match=r"z must have shape .*J'=7, d_z=4.*\(1, 2, 5, 4\)"):
        vae.decode(torch.randn(1, 2, 5, 4))
    with pytest.raises(ValueError, match=r"\(1, 2, 7, 3\)"):
        vae.decode(torch.randn(1, 2, 7, 3))
    with pytest.raises(TypeError, match="z must be a floating"):
        vae.decode(torch.zeros(1, 2, 7, 4, dtype=torch.int32))
    x = torch.randn(2, 8, J, 9)
    out = vae(x)
    with pytest.raises(TypeError, match="mask must be a bool"):
        vae.loss(x, out, mask=torch.ones(2, 8))
    with pytest.raises(ValueError, match=r"mask must have shape \(B, N\) = \(2, 8\)"):
        vae.loss(x, out, mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="recon"):
        vae.loss(x[:, :4], out)
    with pytest.raises(TypeError, match="dict"):
        vae.loss(x, out["recon"])
    with pytest.raises(ValueError, match=r"offsets must have shape \(44, 3\)"):
        SkeletonVAE(VAEConfig(**MICRO), offsets=np.zeros((20, 3)))
    with pytest.raises(TypeError, match="VAEConfig"):
        SkeletonVAE({"channels": (8, 8, 8)})
    with pytest.raises(ValueError, match="unknown backend"):
        vae.backend = "fast"
    with pytest.raises(ValueError, match="unknown backend"):
        SkeletonVAE(VAEConfig(**MICRO), backend="gpu")


# -- masking -------------------------------------------------------------------------------
def test_mask_excludes_padded_frames():
    vae = micro_vae()
    B, N = 2, 16
    x = torch.randn(B, N, J, 9)
    mask = torch.zeros(B, N, dtype=torch.bool)
    mask[0, :16] = True
    mask[1, :7] = True
    out = vae(x, sample=False)
    ref = vae.loss(x, out, mask)
    # the padded frames of the target, and of the reconstruction (even NaN), do not matter
    x2 = x.clone()
    x2[~mask] = 100.0 * torch.randn_like(x2[~mask])
    recon2 = out["recon"].clone()
    recon2[~mask] = float("nan")
    got = vae.loss(x2, {**out, "recon": recon2}, mask)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=0, atol=0, msg=k)
    # a valid frame does matter (so the test above can fail)
    x3 = x.clone()
    x3[1, 6] += 1.0
    changed = vae.loss(x3, out, mask)
    assert all(float(changed[k].detach()) != float(ref[k].detach()) for k in ("feat", "pos", "vel"))
    # gradients stay finite with NaN in padded recon frames
    recon3 = out["recon"].detach().clone().requires_grad_(True)
    with torch.no_grad():
        recon3[~mask] = float("nan")
    vae.loss(x, {**out, "recon": recon3}, mask)["total"].backward()
    assert bool(torch.isfinite(recon3.grad).all()) and float(recon3.grad[~mask].abs().sum()) == 0.0


def test_mask_equals_cropping():
    """Oracle: a mask over the first L frames (L a multiple of 4) gives the loss of the crop."""
    vae = micro_vae()
    x = torch.randn(1, 16, J, 9)
    out = vae(x, sample=False)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[:, :8] = True
    masked = vae.loss(x, out, mask)
    cropped = vae.loss(x[:, :8], {"recon": out["recon"][:, :8], "mu": out["mu"][:, :2],
                                  "logvar": out["logvar"][:, :2]})
    for k in masked:
        torch.testing.assert_close(masked[k], cropped[k], msg=k)
    full = vae.loss(x, out, torch.ones(1, 16, dtype=torch.bool))
    for k, v in vae.loss(x, out).items():
        torch.testing.assert_close(full[k], v, msg=k)


# -- loss against independent formulas -----------------------------------------------------
def test_loss_terms_match_formulas():
    cfg = VAEConfig(**MICRO, w_pos=2.0, w_vel=3.0, w_kl=0.5)
    vae = SkeletonVAE(cfg, offsets=SIGNING_SKELETON.offsets * 0.9)
    feats = smooth_features(2, 8)
    vae.normalizer.fit(feats)
    x = vae.normalizer.normalize(feats)
    out = vae(x)
    got = vae.loss(x, out)
    rec_feats = out["recon"] * vae.normalizer.std + vae.normalizer.mean
    off = torch.as_tensor(SIGNING_SKELETON.offsets * 0.9)
    p_rec, p_tgt = features_to_positions(rec_feats, off), features_to_positions(feats, off)
    feat = F.l1_loss(out["recon"], x)
    pos = F.l1_loss(p_rec, p_tgt)
    vel = F.l1_loss(p_rec.diff(dim=1), p_tgt.diff(dim=1))
    std = (0.5 * out["logvar"]).exp()
    kl = torch.distributions.kl_divergence(torch.distributions.Normal(out["mu"], std),
                                           torch.distributions.Normal(0.0, 1.0)).mean()
    torch.testing.assert_close(got["feat"], feat)
    torch.testing.assert_close(got["pos"], pos, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got["vel"], vel, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(got["kl"], kl, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["total"], feat + 2.0 * pos + 3.0 * vel + 0.5 * kl, rtol=1e-4, atol=1e-6)
    # perfect reconstruction with a standard-normal posterior: every term is 0
    zero = vae.loss(x, {"recon": x, "mu": torch.zeros_like(out["mu"]), "logvar": torch.zeros_like(out["mu"])})
    for k, v in zero.items():
        assert abs(float(v)) < 1e-6, k


# -- determinism and sampling --------------------------------------------------------------
def test_eval_mode_is_deterministic_and_training_samples():
    vae = micro_vae()
    x = torch.randn(2, 8, J, 9)
    vae.eval()
    a, b = vae(x), vae(x)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert torch.equal(a["z"], a["mu"])
    mu1, lv1 = vae.encode(x)
    mu2, lv2 = vae.encode(x)
    assert torch.equal(mu1, mu2) and torch.equal(lv1, lv2)
    assert torch.equal(vae.decode(mu1), vae.decode(mu1))
    vae.train()
    out = vae(x)
    assert not torch.equal(out["z"], out["mu"])  # a posterior sample in training
    assert torch.equal(vae(x, sample=False)["z"], out["mu"])


# -- building blocks against dense oracles -------------------------------------------------
def test_stconv_matches_dense_oracle_and_uses_ops(monkeypatch):
    torch.manual_seed(1)
    skel = pooling_hierarchy(7).levels[1]
    conv = STConv(skel, 5, 6, temporal_kernel=3)
    h = torch.randn(2, 8, skel.num_joints, 5)
    adj = torch.as_tensor(skel.adjacency(), dtype=torch.float32)
    a = adj / adj.sum(1, keepdim=True)
    skel_out = h @ conv.w_self.t() + torch.einsum("ij,bnjc->bnic", a, h) @ conv.w_neigh.t() + conv.bias
    w = conv.temporal.weight  # (C_out, C_in, K)
    hp = F.pad(h, (0, 0, 0, 0, 1, 1))  # zero-pad frames
    temp_out = sum(hp[:, k:k + 8] @ w[:, :, k].t() for k in range(3))
    torch.testing.assert_close(conv(h), skel_out + temp_out, rtol=1e-5, atol=1e-5)

    calls = []
    real = ops.skeletal_graph_conv

    def spy(*args, backend=None, **kw):
        calls.append(backend)
        return real(*args, backend=backend, **kw)

    monkeypatch.setattr(ops, "skeletal_graph_conv", spy)
    vae = micro_vae(blocks_per_level=2)
    vae.backend = "reference"
    vae(torch.randn(1, 8, J, 9))
    n_conv = sum(isinstance(m, STConv) for m in vae.modules())
    assert n_conv == 12 and calls == ["reference"] * n_conv


@pytest.mark.parametrize("K, N, dtype", [(3, 7, torch.float32), (5, 12, torch.float32), (1, 5, torch.float32),
                                         (3, 9, torch.bfloat16)])
def test_stconv_temporal_part_forward_backward_vs_conv1d(K, N, dtype):
    """F_temp runs as a (K, 1) conv2d over the channels-last view of h (no layout copies); it
    must equal nn.Conv1d over frames on the (B*J, C, N) copy computed in float64, values and
    gradients, also for a non-contiguous input and odd N. Tolerances: fp32 1e-5 (values, input
    gradient) and 1e-4 (weight gradient: sums of B*J*N ~ 400-1600 products); bf16 3% of the
    largest magnitude (bf16 keeps 8 bits)."""
    torch.manual_seed(2)
    skel = pooling_hierarchy(7).levels[0]
    conv = STConv(skel, 6, 5, temporal_kernel=K)
    with torch.no_grad():  # isolate F_temp: no graph convolution
        conv.w_self.zero_(), conv.w_neigh.zero_(), conv.bias.zero_()
    B, J = 3, skel.num_joints
    base = torch.randn(B, J, N, 6)
    g = torch.randn(B, N, J, 5)

    h64 = base.double().transpose(1, 2).requires_grad_(True)
    w64 = conv.temporal.weight.detach().double().requires_grad_(True)
    ref = F.conv1d(h64.permute(0, 2, 3, 1).reshape(B * J, 6, N), w64, padding=K // 2)
    ref = ref.view(B, J, 5, N).permute(0, 3, 1, 2)
    ref_dh, ref_dw = torch.autograd.grad(ref, (h64, w64), g.double())

    conv = conv.to(dtype)
    h = base.to(dtype).transpose(1, 2).requires_grad_(True)  # (B, N, J, C), non-contiguous
    assert not h.is_contiguous()
    out = conv(h)
    assert out.shape == (B, N, J, 5) and out.dtype == dtype
    dh, dw = torch.autograd.grad(out, (h, conv.temporal.weight), g.to(dtype))

    def close(got, want, tol):
        atol = tol if dtype == torch.float32 else 0.03 * float(want.abs().max())
        torch.testing.assert_close(got.double(), want, rtol=tol if dtype == torch.float32 else 0.03, atol=atol)

    close(out, ref, 1e-5)
    close(dh, ref_dh, 1e-5)
    close(dw, ref_dw, 1e-4)


def test_stpool_and_stunpool_match_loops():
    torch.manual_seed(2)
    hier = pooling_hierarchy(7)
    pool = STPool(hier.pool_matrix(0), 3, 4)
    h = torch.randn(2, 6, J, 3)
    expect = torch.stack([h[:, :, list(g)].mean(2) for g in hier.groups[0]], dim=2)
    expect = 0.5 * (expect[:, 0::2] + expect[:, 1::2])
    torch.testing.assert_close(pool(h), pool.proj(expect))

    unpool = STUnpool(hier.unpool_matrix(1), 4, 3)
    z = torch.randn(2, 3, 7, 4)
    p = unpool.proj(z)
    owner = {j: g for g, mem in enumerate(hier.groups[1]) for j in mem}
    fine = torch.stack([p[:, :, owner[j]] for j in range(hier.levels[1].num_joints)], dim=2)
    expect = F.interpolate(fine.permute(0, 2, 3, 1).flatten(0, 1), scale_factor=2, mode="linear",
                           align_corners=False).view(2, 20, 3, 6).permute(0, 3, 1, 2)
    torch.testing.assert_close(unpool(z), expect + unpool.joint_embedding)


@pytest.mark.parametrize("N", [1, 2, 5])
def test_upsample_time_linear_matches_interpolate(N):
    h = torch.randn(2, N, 3, 4)
    ref = F.interpolate(h.permute(0, 2, 3, 1).flatten(0, 1), scale_factor=2, mode="linear", align_corners=False)
    torch.testing.assert_close(upsample_time_linear(h), ref.view(2, 3, 4, 2 * N).permute(0, 3, 1, 2))


def test_backend_switch_same_weights():
    """The same weights on the C++ extension (backend "cuda", CPU kernels here) give the
    reference's outputs and gradients."""
    if "cuda" not in ops.available_backends("skeletal_graph_conv"):
        pytest.skip("the C++ extension backend is not available here")
    vae = micro_vae()
    x = torch.randn(2, 8, J, 9)
    results = {}
    for backend in ("reference", "cuda"):
        vae.backend = backend
        vae.zero_grad()
        out = vae(x, sample=False)
        vae.loss(x, out)["total"].backward()
        results[backend] = (out["recon"].detach(), {n: p.grad.clone() for n, p in vae.named_parameters()})
    torch.testing.assert_close(results["cuda"][0], results["reference"][0], rtol=1e-4, atol=1e-5)
    for n, g in results["reference"][1].items():
        torch.testing.assert_close(results["cuda"][1][n], g, rtol=1e-3, atol=1e-5, msg=n)


def test_autocast_bf16_cpu():
    vae = micro_vae()
    x = torch.randn(2, 8, J, 9)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 5:] = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = vae.loss(x, vae(x), mask)
    assert all(v.dtype == torch.float32 and bool(torch.isfinite(v)) for v in losses.values())
    losses["total"].backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in vae.parameters())


# -- training ------------------------------------------------------------------------------
def test_overfits_tiny_batch_and_trains_every_parameter():
    vae = micro_vae(channels=(16, 16, 16), latent_dim=4)
    feats = smooth_features(2, 8, seed=3)
    vae.normalizer.fit(feats)
    x = vae.normalizer.normalize(feats)
    initial = {n: p.detach().clone() for n, p in vae.named_parameters()}
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    first = last = None
    for step in range(400):
        loss = vae.loss(x, vae(x))["total"]
        last = loss.item()
        first = last if first is None else first
        if last < first / 10:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert last < first / 10, f"loss {first:.4f} -> {last:.4f} after {step} steps"
    unchanged = [n for n, p in vae.named_parameters() if torch.equal(p.detach(), initial[n])]
    assert not unchanged, f"parameters never updated: {unchanged}"
    vae.eval()
    with torch.no_grad():
        assert vae.loss(x, vae(x))["total"].item() < first / 10

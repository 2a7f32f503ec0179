"""Denoiser: shapes, padding invariance, an unfused oracle, CFG null token, overfitting, bad input."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from sald_fast import DenoiserConfig, ops
from sald_fast.denoiser import Denoiser, TextContext

J, DZ, TEXT_DIM = 7, 4, 12


def tiny_config(**overrides) -> DenoiserConfig:
    kw = dict(latent_dim=DZ, num_atoms=J, dim=32, num_layers=4, num_heads=4, ffn_mult=2, text_dim=TEXT_DIM,
              max_latent_frames=16, skip_tau=2)
    kw.update(overrides)
    return DenoiserConfig(**kw)


def randomize(model: Denoiser, seed: int = 0) -> Denoiser:
    """Perturb every parameter (FiLM and skips start at zero: make them matter in the checks)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


def inputs(B: int, N: int, L: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, N, J, DZ, generator=g)
    t = torch.randint(0, 1000, (B,), generator=g)
    text = torch.randn(B, L, TEXT_DIM, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[0, L // 2:] = False
    return z, t, text, mask


@pytest.fixture(scope="module")
def model() -> Denoiser:
    torch.manual_seed(0)
    return randomize(Denoiser(tiny_config())).eval()


# ----------------------------------------------------------------------------- shapes

@pytest.mark.parametrize("N", [1, 5, 16])
@pytest.mark.parametrize("B", [1, 3])
def test_shapes_and_dtype(model, B, N):
    z, t, text, mask = inputs(B, N)
    lengths = torch.randint(1, N + 1, (B,))
    drop = torch.arange(B) % 2 == 1
    with torch.no_grad():
        eps = model(z, t, text, mask, lengths, drop)
        eps_uncond = model(z, t.float() + 0.5, None)
    for out in (eps, eps_uncond):
        assert out.shape == (B, N, J, DZ) and out.dtype == torch.float32
        assert torch.isfinite(out).all()


def test_dtype_follows_z_t():
    torch.manual_seed(0)
    m = Denoiser(tiny_config()).eval()
    z, t, text, mask = inputs(2, 3)
    with torch.no_grad():
        out64 = m(z.double(), t, text, mask)  # fp32 model, fp64 input: computed in fp32, returned fp64
        assert out64.dtype == torch.float64
        m.double()
        ref64 = m(z.double(), t, text.double(), mask)
    assert ref64.dtype == torch.float64
    torch.testing.assert_close(out64, ref64, rtol=1e-4, atol=1e-5)


def test_scalar_timestep_broadcasts(model):
    z, _, text, mask = inputs(3, 4)
    with torch.no_grad():
        a = model(z, 17, text, mask)
        b = model(z, torch.full((3,), 17), text, mask)
        c = model(z, torch.tensor(17), text, mask)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_parameter_layout():
    cfg = tiny_config(num_layers=5, skip_tau=2)
    m = Denoiser(cfg)
    assert len(m.skips) == 3  # 0->2, 1->3, 2->4
    assert len(Denoiser(tiny_config(skip_tau=0)).skips) == 0
    assert len(Denoiser(tiny_config(num_layers=2, skip_tau=3)).skips) == 0
    assert m.frame_embedding.shape == (cfg.max_latent_frames, cfg.dim)
    assert m.joint_embedding.shape == (J, cfg.dim) and m.null_text.shape == (1, 1, TEXT_DIM)
    # FiLM starts at gamma = 1, beta = 0
    temb = torch.randn(2, cfg.dim)
    gamma, beta = m.layers[0].film_params(2, temb)
    assert torch.equal(gamma, torch.ones(2, cfg.dim)) and torch.equal(beta, torch.zeros(2, cfg.dim))


# ----------------------------------------------------------------------------- an unfused oracle

def naive_attention(q, k, v, key_mask=None):
    """q (..., Lq, d), k/v (..., Lk, d), key_mask broadcastable (..., 1, Lk) True = attend."""
    s = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if key_mask is not None:
        s = s.masked_fill(~key_mask, float("-inf"))
    return torch.softmax(s, -1) @ v


def naive_forward(m: Denoiser, z_t, t, text, text_mask, lengths, drop):
    """The model written out step by step with plain PyTorch, unfused: LN -> A_k -> FiLM -> add."""
    cfg = m.config
    B, N, _, _ = z_t.shape
    D, H = cfg.dim, cfg.num_heads
    d = D // H
    half = D // 2
    freqs = torch.exp(-torch.log(torch.tensor(10000.0)) * torch.arange(half) / half)
    targ = t.float()[:, None] * freqs
    temb = m.time_mlp(torch.cat([torch.cos(targ), torch.sin(targ)], -1).to(z_t.dtype))  # sinusoid in fp32
    if text is None:
        text, text_mask = m.null_text.expand(B, 1, -1), torch.ones(B, 1, dtype=torch.bool)
    else:
        text = text.clone()
        text_mask = text_mask.clone()
        for b in range(B):
            if drop[b]:
                text[b] = m.null_text[0, 0]
                text_mask[b] = False
                text_mask[b, 0] = True
    x = m.input_proj(z_t) + m.frame_embedding[:N][None, :, None] + m.joint_embedding[None, None]
    frame_mask = torch.arange(N)[None] < lengths[:, None]  # (B, N)
    outs = []
    for li, layer in enumerate(m.layers):
        if cfg.skip_tau and li >= cfg.skip_tau:
            x = x + m.skips[li - cfg.skip_tau](outs[li - cfg.skip_tau])
        for k in range(4):
            y = layer.norms[k](x)
            if k in (0, 1):
                att = layer.temporal if k == 0 else layer.skeletal
                qkv = att.qkv(y).reshape(B, N, J, 3, H, d)
                q, kk, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
                if k == 0:  # over frames: (B, J, H, N, d)
                    p = lambda a: a.permute(0, 2, 3, 1, 4)  # noqa: E731
                    o = naive_attention(p(q), p(kk), p(v), frame_mask[:, None, None, None, :])
                    o = o.permute(0, 3, 1, 2, 4)
                else:  # over joints: (B, N, H, J, d)
                    p = lambda a: a.permute(0, 1, 3, 2, 4)  # noqa: E731
                    o = naive_attention(p(q), p(kk), p(v)).permute(0, 1, 3, 2, 4)
                h = att.proj(o.reshape(B, N, J, D))
            elif k == 2:
                q = layer.cross.q(y).reshape(B, N * J, H, d).transpose(1, 2)
                kv = layer.cross.kv(text).reshape(B, -1, 2, H, d)
                kk, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
                o = naive_attention(q, kk, v, text_mask[:, None, None, :])
                h = layer.cross.proj(o.transpose(1, 2).reshape(B, N, J, D))
            else:
                h = layer.ffn[2](F.gelu(layer.ffn[0](y)))
            gb = layer.film[k](F.silu(temb))
            gamma, beta = 1 + gb[:, :D], gb[:, D:]
            x = x + gamma[:, None, None] * h + beta[:, None, None]
        outs.append(x)
    return m.out_proj(m.out_norm(x))


@pytest.mark.parametrize("tau,layers", [(2, 4), (3, 5), (0, 3)])
def test_matches_unfused_oracle(tau, layers):
    torch.manual_seed(1)
    m = randomize(Denoiser(tiny_config(skip_tau=tau, num_layers=layers)).double(), seed=1).eval()
    z, t, text, mask = inputs(3, 6, seed=1)
    z, text = z.double(), text.double()
    lengths = torch.tensor([6, 2, 4])
    drop = torch.tensor([False, True, False])
    with torch.no_grad():
        got = m(z, t, text, mask, lengths, drop)
        want = naive_forward(m, z, t, text, mask, lengths, drop)
        got_u = m(z, t, None, lengths=lengths)
        want_u = naive_forward(m, z, t, None, None, lengths, None)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got_u, want_u, rtol=1e-9, atol=1e-9)


def test_fused_ops_are_used_with_strided_views(model):
    """Every residual step goes through the fused op; attention gets q/k/v as views of one qkv."""
    calls = {"film": 0, "temporal": 0, "skeletal": 0}
    real = (ops.film_residual_layernorm, ops.temporal_attention, ops.skeletal_attention)

    def film(*a, **kw):
        calls["film"] += 1
        return real[0](*a, **kw)

    def attn(name, fn):
        def wrapped(q, k, v, *a, **kw):
            calls[name] += 1
            assert not q.is_contiguous() and q.untyped_storage().data_ptr() == v.untyped_storage().data_ptr()
            assert kw.get("backend", "missing") == model.backend
            return fn(q, k, v, *a, **kw)
        return wrapped

    z, t, text, mask = inputs(2, 5)
    with mock.patch.object(ops, "film_residual_layernorm", film), \
            mock.patch.object(ops, "temporal_attention", attn("temporal", real[1])), \
            mock.patch.object(ops, "skeletal_attention", attn("skeletal", real[2])), torch.no_grad():
        model(z, t, text, mask, torch.tensor([5, 3]))
    L = model.config.num_layers
    assert calls == {"film": 4 * L, "temporal": L, "skeletal": L}


# ----------------------------------------------------------------------------- padding

def test_padding_invariance(model):
    B, N = 3, 8
    z, t, text, mask = inputs(B, N)
    lengths = torch.tensor([8, 3, 1])
    drop = torch.tensor([False, False, True])
    z2 = z.clone()
    g = torch.Generator().manual_seed(5)
    for b, n in enumerate(lengths.tolist()):
        z2[b, n:] = 100.0 * torch.randn(N - n, J, DZ, generator=g)
    with torch.no_grad():
        a = model(z, t, text, mask, lengths, drop)
        b_ = model(z2, t, text, mask, lengths, drop)
        no_mask = model(z2, t, text, mask, None, drop)
    for b, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(a[b, :n], b_[b, :n], rtol=0, atol=1e-6)
    # the test can fail: without lengths, padded content reaches the valid frames
    assert not torch.allclose(a[1, :3], no_mask[1, :3], atol=1e-3)
    # and a change on a valid frame reaches the other valid frames
    z3 = z.clone()
    z3[1, 0] += 1.0
    with torch.no_grad():
        c = model(z3, t, text, mask, lengths, drop)
    assert not torch.allclose(a[1, 1:3], c[1, 1:3], atol=1e-4)


# ----------------------------------------------------------------------------- text / CFG

def test_drop_all_equals_unconditional(model):
    z, t, text, mask = inputs(3, 5)
    with torch.no_grad():
        dropped = model(z, t, text, mask, None, torch.ones(3, dtype=torch.bool))
        uncond = model(z, t, None)
        cond = model(z, t, text, mask)
        partly = model(z, t, text, mask, None, torch.tensor([True, False, False]))
    torch.testing.assert_close(dropped, uncond, rtol=0, atol=1e-6)
    assert not torch.allclose(cond, uncond, atol=1e-3)
    torch.testing.assert_close(partly[0], uncond[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(partly[1:], cond[1:], rtol=0, atol=1e-6)
    # a dropped sample may have an all-False mask (its text is replaced anyway)
    empty = mask.clone()
    empty[0] = False
    with torch.no_grad():
        again = model(z, t, text, empty, None, torch.tensor([True, False, False]))
    torch.testing.assert_close(again, partly, rtol=0, atol=1e-6)


def test_text_mask_hides_padding_tokens(model):
    z, t, text, mask = inputs(3, 4)
    text2 = text.clone()
    text2[0, 3:] = 50.0  # sample 0's mask is False from token 3 on
    with torch.no_grad():
        a = model(z, t, text, mask)
        b = model(z, t, text2, mask)
    assert torch.equal(a, b)


def test_precomputed_text_context(model):
    z, t, text, mask = inputs(3, 5)
    drop = torch.tensor([False, True, False])
    lengths = torch.tensor([5, 4, 2])
    with torch.no_grad():
        ctx = model.encode_text(text, mask, drop)
        assert isinstance(ctx, TextContext) and len(ctx.keys) == model.config.num_layers
        for step in (999, 500, 3):
            ts = torch.full((3,), step)
            torch.testing.assert_close(model(z, ts, lengths=lengths, text_context=ctx),
                                       model(z, ts, text, mask, lengths, drop), rtol=0, atol=1e-6)
        uctx = model.encode_text(None)  # batch 1 broadcast over B
        torch.testing.assert_close(model(z, t, text_context=uctx), model(z, t, None), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="text_context or text"):
        model(z, t, text, text_context=ctx)


# ----------------------------------------------------------------------------- training

def test_overfits_and_every_parameter_learns():
    torch.manual_seed(0)
    cfg = tiny_config(num_layers=4, skip_tau=2, max_latent_frames=6)
    m = Denoiser(cfg).train()
    init = {k: v.detach().clone() for k, v in m.named_parameters()}
    g = torch.Generator().manual_seed(3)
    B, N = 4, 6
    z = torch.randn(B, N, J, DZ, generator=g)
    t = torch.tensor([10, 300, 650, 990])
    text = torch.randn(B, 5, TEXT_DIM, generator=g)
    mask = torch.ones(B, 5, dtype=torch.bool)
    mask[2, 3:] = False
    lengths = torch.tensor([6, 4, 6, 3])
    drop = torch.tensor([False, True, False, True])
    target = torch.randn(B, N, J, DZ, generator=g)
    valid = (torch.arange(N)[None] < lengths[:, None]).float()[:, :, None, None]

    def loss_fn() -> torch.Tensor:
        err = (m(z, t, text, mask, lengths, drop) - target).pow(2) * valid
        return err.sum() / (valid.sum() * J * DZ)

    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    first = loss_fn().item()
    last = first
    for _ in range(400):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        opt.step()
        last = loss.item()
        if last < first / 20:
            break
    assert last < first / 10, f"loss {first:.4f} -> {last:.4f}"
    unchanged = [k for k, p in m.named_parameters() if torch.equal(p.detach(), init[k])]
    assert not unchanged, f"parameters that never changed: {unchanged}"


# ----------------------------------------------------------------------------- modes and variants

def test_eval_is_deterministic_train_dropout_is_not():
    torch.manual_seed(0)
    m = Denoiser(tiny_config(dropout=0.2))
    z, t, text, mask = inputs(2, 5)
    m.eval()
    with torch.no_grad():
        assert torch.equal(m(z, t, text, mask), m(z, t, text, mask))
    m.train()
    with torch.no_grad():
        assert not torch.equal(m(z, t, text, mask), m(z, t, text, mask))


def test_sinusoidal_positions_variant():
    torch.manual_seed(0)
    m = Denoiser(tiny_config(pos_embedding="sinusoidal")).eval()
    assert "frame_embedding" not in m.state_dict()
    learned_keys = set(Denoiser(tiny_config()).state_dict())
    assert set(m.state_dict()) == learned_keys - {"frame_embedding"}
    z, t, text, mask = inputs(2, 16)
    with torch.no_grad():
        eps = m(z, t, text, mask, torch.tensor([16, 9]))
    assert eps.shape == z.shape and torch.isfinite(eps).all()
    # frames are told apart: identical frames give different outputs
    zc = z[:, :1].expand(-1, 16, -1, -1).contiguous()
    with torch.no_grad():
        out = randomize(m)(zc, t, text, mask)
    assert not torch.allclose(out[:, 0], out[:, 5], atol=1e-4)


def test_backend_attribute_and_state_dict_keys():
    torch.manual_seed(0)
    a = Denoiser(tiny_config(), backend="triton")  # constructing does not load the backend
    b = Denoiser(tiny_config())
    assert a.backend == "triton" and b.backend is None
    assert list(a.state_dict()) == list(b.state_dict())
    a.backend = "reference"
    a.load_state_dict(randomize(b).state_dict())
    z, t, text, mask = inputs(2, 3)
    with torch.no_grad():
        assert torch.equal(a.eval()(z, t, text, mask), b.eval()(z, t, text, mask))
    with pytest.raises(ValueError, match="backend must be"):
        a.backend = "fastest"
    with pytest.raises(TypeError, match="DenoiserConfig"):
        Denoiser({"dim": 32})


# ----------------------------------------------------------------------------- bad input

BAD_INPUTS = [
    # (description, kwargs patch, error type, message pattern)
    ("z_t rank", dict(z_t=torch.randn(2, 3, J * DZ)), ValueError, r"z_t must be \(B, N', J'=7, d_z=4\)"),
    ("z_t joints", dict(z_t=torch.randn(2, 3, 5, DZ)), ValueError, r"got shape \(2, 3, 5, 4\)"),
    ("z_t latent dim", dict(z_t=torch.randn(2, 3, J, 6)), ValueError, r"d_z=4"),
    ("z_t too long", dict(z_t=torch.randn(2, 17, J, DZ), lengths=None), ValueError, r"max_latent_frames is 16"),
    ("z_t int", dict(z_t=torch.zeros(2, 3, J, DZ, dtype=torch.long)), TypeError, r"z_t must be a floating"),
    ("z_t list", dict(z_t=[[0.0]]), TypeError, r"z_t must be a torch.Tensor"),
    ("t shape", dict(t=torch.zeros(3, dtype=torch.long)), ValueError, r"t must be \(B,\) = \(2,\)"),
    ("t 2-D", dict(t=torch.zeros(2, 1)), ValueError, r"t must be \(B,\)"),
    ("t bool", dict(t=torch.zeros(2, dtype=torch.bool)), TypeError, r"int or float timesteps"),
    ("text dim", dict(text=torch.randn(2, 5, 7)), ValueError, r"text_dim=12"),
    ("text rank", dict(text=torch.randn(2, TEXT_DIM)), ValueError, r"text must be \(B=2"),
    ("text batch", dict(text=torch.randn(3, 5, TEXT_DIM), text_mask=None), ValueError, r"text must be \(B=2"),
    ("text int", dict(text=torch.zeros(2, 5, TEXT_DIM, dtype=torch.long)), TypeError, r"text must be a floating"),
    ("mask dtype", dict(text_mask=torch.ones(2, 5)), TypeError, r"text_mask must be a bool"),
    ("mask shape", dict(text_mask=torch.ones(2, 4, dtype=torch.bool)), ValueError, r"text_mask must be \(B, L\)"),
    ("mask without text", dict(text=None), ValueError, r"text_mask was given without text"),
    ("lengths float", dict(lengths=torch.tensor([3.0, 1.0])), TypeError, r"lengths must be an int32/int64"),
    ("lengths shape", dict(lengths=torch.tensor([3])), ValueError, r"lengths must be \(B,\) = \(2,\)"),
    ("drop dtype", dict(drop_text=torch.tensor([0, 1])), TypeError, r"drop_text must be a bool"),
    ("drop shape", dict(drop_text=torch.tensor([True])), ValueError, r"drop_text must be \(B,\)"),
]


@pytest.mark.parametrize("desc,patch,exc,pattern", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_inputs(model, desc, patch, exc, pattern):
    z, t, text, mask = inputs(2, 3, L=5)
    mask = torch.ones(2, 5, dtype=torch.bool)
    kw = dict(z_t=z, t=t, text=text, text_mask=mask, lengths=torch.tensor([3, 1]), drop_text=None)
    kw.update(patch)
    with pytest.raises(exc, match=pattern):
        model(**kw)


VALUE_ERRORS = [
    # values forward does not read (no host sync per step); checked once by validate_values / the sampler
    ("mask empty row", dict(text_mask=torch.tensor([[True] * 5, [False] * 5])), r"no real token"),
    ("lengths zero", dict(lengths=torch.tensor([3, 0])), r"lengths must lie in \[1, N'=3\]"),
    ("lengths long", dict(lengths=torch.tensor([4, 1])), r"got min 1, max 4"),
]


@pytest.mark.parametrize("desc,patch,pattern", VALUE_ERRORS, ids=[v[0] for v in VALUE_ERRORS])
def test_bad_values_are_caught_at_the_entry_points(model, desc, patch, pattern):
    from sald_fast.diffusion import GaussianDiffusion
    from sald_fast.config import DiffusionConfig

    kw = dict(lengths=torch.tensor([3, 1]), text_mask=torch.ones(2, 5, dtype=torch.bool))
    kw.update(patch)
    with pytest.raises(ValueError, match=pattern):
        model.validate_values(3, kw["lengths"], kw["text_mask"])
    text = torch.randn(2, 5, TEXT_DIM)
    with pytest.raises(ValueError, match=pattern):
        GaussianDiffusion(DiffusionConfig()).sample(model, (2, 3, J, DZ), text, kw["text_mask"], kw["lengths"], steps=2)
    # a dropped sample may have an empty mask
    model.validate_values(3, None, torch.tensor([[True] * 5, [False] * 5]), torch.tensor([False, True]))


# sha256 of "key shape" lines of tiny_config()'s state_dict, taken before DenoiserLayer's integer
# sub_block(k) dispatch became named sub-blocks: checkpoints written before must still load.
STATE_DICT_SHA256 = "c34674d4673136bd42f719ac128a5bb34ddfcec7d273737f00bae8d8202a8107"


def test_state_dict_keys_and_shapes_are_pinned():
    import hashlib

    sd = Denoiser(tiny_config()).state_dict()
    lines = "\n".join(f"{k} {tuple(v.shape)}" for k, v in sd.items())
    assert len(sd) == 153 and hashlib.sha256(lines.encode()).hexdigest() == STATE_DICT_SHA256


def test_named_sub_blocks_in_order():
    m = Denoiser(tiny_config()).eval()
    z, t, text, mask = inputs(2, 3)
    context = m.encode_text(text.float(), mask)
    layer = m.layers[0]
    blocks = dict(layer.sub_blocks(None, context, 0, None))
    assert list(blocks) == list(layer.SUB_BLOCKS) == ["temporal", "skeletal", "cross", "ffn"]
    y = torch.randn(2, 3, J, 32)
    with torch.no_grad():
        torch.testing.assert_close(blocks["temporal"](y), layer.temporal(y, None, None))
        torch.testing.assert_close(blocks["skeletal"](y), layer.skeletal(y, None, None))
        torch.testing.assert_close(blocks["cross"](y), layer.cross(y, context.keys[0], context.values[0], context.mask))
        torch.testing.assert_close(blocks["ffn"](y), layer.ffn(y))

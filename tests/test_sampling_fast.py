"""The sampling fast path: FiLM parameters computed once per run (``Denoiser.film_parameters``),
the shared CFG halves, padded frames and text tokens, ``SignSALD.generate(compile=True)`` and
``auto``'s remembered choices. Each is checked against the plain path it replaces (fp32,
tolerance 1e-5 relative to the output's scale)."""

from __future__ import annotations

import pytest
import torch

from sald_fast.config import DenoiserConfig, DiffusionConfig, TextConfig, preset
from sald_fast.denoiser import Denoiser
from sald_fast.diffusion import GaussianDiffusion
from sald_fast.ops import dispatch
from sald_fast.pipeline import SignSALD, compile_bucket


def _denoiser(**changes) -> Denoiser:
    torch.manual_seed(0)
    cfg = DenoiserConfig(latent_dim=4, num_atoms=5, dim=16, num_layers=3, num_heads=2, ffn_mult=2, text_dim=8,
                         max_latent_frames=12, skip_tau=2, **changes)
    den = Denoiser(cfg, backend="reference").eval()
    with torch.no_grad():  # non-zero FiLM and skips, so every term matters
        for p in den.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return den


def _close(a: torch.Tensor, b: torch.Tensor, rel: float = 1e-5) -> None:
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    assert err <= rel * max(b.abs().max().item(), 1.0), err


def _cfg_batch(den: Denoiser, B: int = 2, N: int = 6, L: int = 5, seed: int = 0):
    """A CFG batch: the same z, t and lengths twice, conditional then unconditional text."""
    g = torch.Generator().manual_seed(seed)
    c = den.config
    z = torch.randn(B, N, c.num_atoms, c.latent_dim, generator=g)
    text = torch.randn(B, L, c.text_dim, generator=g)
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[-1, 2:] = False
    lengths = torch.randint(1, N + 1, (B,), generator=g)
    t = torch.full((2 * B,), 637)
    drop = torch.cat([torch.zeros(B, dtype=torch.bool), torch.ones(B, dtype=torch.bool)])
    return (torch.cat([z, z]), t, torch.cat([text, text]), torch.cat([mask, mask]), torch.cat([lengths, lengths]),
            drop)


VARIANTS = [{}, {"temporal_attention": False}, {"skeletal_attention": False}, {"text_conditioning": "concat"}]


@pytest.mark.parametrize("changes", VARIANTS, ids=["full", "no_temporal", "no_skeletal", "concat"])
@torch.no_grad()
def test_film_table_and_shared_halves_equal_the_plain_forward(changes):
    den = _denoiser(**changes)
    z, t, text, mask, lengths, drop = _cfg_batch(den)
    expected = den(z, t, text, mask, lengths, drop)
    context = den.encode_text(text, mask, drop)
    film = den.film_parameters(torch.tensor([637, 12]))
    assert film.shape == (2, den.num_film, 2, den.config.dim)
    cases = [{"film": film[:1]}, {"shared_halves": True}, {"film": film[:1], "shared_halves": True},
             {"film": film[:1].expand(z.shape[0], -1, -1, -1), "shared_halves": True}]
    if den.config.text_conditioning == "cross_attention":  # the second half is the null text (drop)
        cases += [{"shared_halves": True, "null_text_half": True},
                  {"film": film[:1], "shared_halves": True, "null_text_half": True}]
    for kwargs in cases:
        out = den(z, t, lengths=lengths, text_context=context, **kwargs)
        _close(out, expected)
    # another timestep's row gives another answer: the table is what the forward reads
    assert not torch.allclose(den(z, t, lengths=lengths, text_context=context, film=film[1:]), expected, atol=1e-4)


def test_film_and_shared_halves_reject_bad_input():
    den = _denoiser()
    z, t, text, mask, lengths, drop = _cfg_batch(den)
    context = den.encode_text(text, mask, drop)
    with pytest.raises(ValueError, match="even batch"):
        den(z[:3], t[:3], lengths=lengths[:3], text_context=den.encode_text(text[:3], mask[:3], drop[:3]),
            shared_halves=True)
    with pytest.raises(ValueError, match="film must be"):
        den(z, t, lengths=lengths, text_context=context, film=torch.zeros(1, den.num_film - 1, 2, 16))
    with pytest.raises(TypeError, match="film must be a floating"):
        den(z, t, lengths=lengths, text_context=context, film=torch.zeros(1, den.num_film, 2, 16, dtype=torch.long))
    with pytest.raises(TypeError, match="1-D int or float"):
        den.film_parameters(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="null_text_half=True needs shared_halves"):
        den(z, t, lengths=lengths, text_context=context, null_text_half=True)
    with pytest.raises(ValueError, match="a row per sample"):
        den(z, t, lengths=lengths, text_context=den.encode_text(None), shared_halves=True, null_text_half=True)
    concat = _denoiser(text_conditioning="concat")
    with pytest.raises(ValueError, match="cross-attention"):
        concat(z, t, lengths=lengths, text_context=concat.encode_text(text, mask, drop), shared_halves=True,
               null_text_half=True)


@pytest.mark.parametrize("scheduler", ["ddim", "dpm++"])
def test_sampler_with_film_table_equals_the_sampler_without(scheduler):
    """The planned sampler hands the denoiser its FiLM rows and the shared CFG halves; a wrapper
    without ``film_parameters`` gets neither and must give the same latents."""
    den = _denoiser()
    diffusion = GaussianDiffusion(DiffusionConfig())
    z, t, text, mask, lengths, drop = _cfg_batch(den)
    B = 2

    class Plain(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def encode_text(self, *args):
            return self.inner.encode_text(*args)

        def forward(self, *args, **kwargs):
            return self.inner(*args, **kwargs)

    shape = (B, 6, 5, 4)
    runs = [diffusion.sample(d, shape, text[:B], mask[:B], lengths[:B], steps=8, guidance=2.5, scheduler=scheduler,
                             generator=torch.Generator().manual_seed(3)) for d in (den, Plain(den))]
    _close(runs[0], runs[1])


def test_padded_frames_equal_the_unpadded_run():
    den = _denoiser()
    diffusion = GaussianDiffusion(DiffusionConfig())
    _, _, text, mask, _, _ = _cfg_batch(den)
    shape = (2, 5, 5, 4)
    lengths = torch.tensor([5, 3])
    for lens in (None, lengths):
        plain = diffusion.sample(den, shape, text[:2], mask[:2], lens, steps=6, generator=torch.Generator().manual_seed(1))
        padded = diffusion.sample(den, shape, text[:2], mask[:2], lens, steps=6, pad_frames_to=12,
                                  generator=torch.Generator().manual_seed(1))
        assert padded.shape == shape
        valid = torch.arange(5).view(1, 5) < (torch.full((2,), 5) if lens is None else lens).view(2, 1)
        _close(padded[valid], plain[valid])
    with pytest.raises(ValueError, match="pad_frames_to must be >= N'"):
        diffusion.sample(den, shape, text[:2], mask[:2], None, steps=2, pad_frames_to=4)
    with pytest.raises(ValueError, match="noise must be a tensor of shape"):
        diffusion.sample(den, shape, text[:2], mask[:2], None, steps=2, noise=torch.zeros(2, 4, 5, 4))


def test_compile_bucket():
    assert [compile_bucket(n) for n in (1, 8, 9, 16, 17, 28, 29, 33, 64, 65, 200, 257, 300)] == \
        [8, 8, 12, 16, 20, 28, 32, 48, 64, 96, 256, 384, 384]
    with pytest.raises(ValueError, match="num_latent_frames must be >= 1"):
        compile_bucket(0)


def _small_model(backend: str = "auto") -> SignSALD:
    cfg = preset("tiny")
    cfg.text = TextConfig(kind="tiny", max_tokens=12, tiny_dim=32, seed=0)
    cfg.denoiser.text_dim = 32
    cfg.denoiser.num_layers = 2
    model = SignSALD.from_config(cfg, seed=0, backend=backend).eval()
    with torch.no_grad():
        for p in model.denoiser.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_compiled_denoiser_is_remade_when_the_weights_change():
    model = _small_model()
    first = model.compiled_denoiser()
    assert model.compiled_denoiser() is first  # cached
    assert "_compiled_denoiser" not in dict(model.named_modules()) and \
        not any(k.startswith("_compiled") for k in model.state_dict())
    with torch.no_grad():
        model.denoiser.out_proj.bias.add_(1.0)  # an in-place update
    second = model.compiled_denoiser()
    assert second is not first
    assert torch.equal(second.module.out_proj.bias, model.denoiser.out_proj.bias)  # a copy of the new weights
    assert second.module.out_proj.bias.data_ptr() != model.denoiser.out_proj.bias.data_ptr()
    model.denoiser.backend = "reference"
    assert model.compiled_denoiser() is not second


@pytest.mark.slow
def test_generate_compiled_equals_eager():
    """generate(compile=True) (AOTInductor on the CPU, padded frames and tokens, the guided step in
    the library) gives the eager output of the same seed, for two lengths in one bucket (one
    compiled library)."""
    model = _small_model()
    for frames in (20, 28):  # latent 5 and 7 -> bucket 8
        eager = model.generate("where is the library", num_frames=frames, steps=4, seed=5)
        fast = model.generate("where is the library", num_frames=frames, steps=4, seed=5, compile=True)
        _close(fast.features, eager.features, rel=1e-4)
        _close(fast.positions, eager.positions, rel=1e-4)
    assert len(model.compiled_denoiser().compiled_signatures) == 1


# ----------------------------------------------------------------------------- AOTDenoiser

def _sampler_inputs(den: Denoiser, B: int = 2):
    """What the planned sampler hands the denoiser: z (B), t (B), lengths (B), a text context of the
    CFG batch 2B (conditional rows, then dropped ones), a FiLM row."""
    z, t, text, mask, lengths, drop = _cfg_batch(den, B)
    with torch.no_grad():
        context = den.encode_text(text, mask, drop)
        film = den.film_parameters(torch.tensor([637]))
    return z[:B], t[:B], lengths[:B], context, film


def test_aot_denoiser_runs_other_calls_eagerly_and_checks_input():
    """Calls the library is not built for run the eager copy (so they need no compile); bad input
    fails with the eager checks' message before any compile."""
    from sald_fast.aot import AOTDenoiser

    den = _denoiser()
    aot = AOTDenoiser(den)
    z, t, lengths, context, film = _sampler_inputs(den)
    z2, t2, l2 = torch.cat([z, z]), torch.cat([t, t]), torch.cat([lengths, lengths])
    with torch.no_grad():
        want = den(z2, t2, lengths=l2, text_context=context, film=film, shared_halves=True)
    got = aot(z2, t2, lengths=l2, text_context=context, film=film, shared_halves=True)  # grad enabled: eager
    _close(got, want)
    eps_c, eps_u = want.chunk(2)
    _close(aot.guided_prediction(z, t, lengths, context, film, 1.5), eps_u + 1.5 * (eps_c - eps_u))  # eager too
    with torch.no_grad():
        _close(aot(z2, t2, lengths=l2, text_context=context), want)  # no FiLM row: eager
        with pytest.raises(ValueError, match="z_t must be"):
            aot(z2[..., :3], t2, lengths=l2, text_context=context, film=film)
        with pytest.raises(ValueError, match="2B"):
            aot.guided_prediction(z[:1], t[:1], lengths[:1], context, film, 1.5)
    assert aot.compiled_signatures == [] and not any(p.requires_grad for p in aot.module.parameters())
    assert aot.config is aot.module.config  # attributes are the copy's


def test_aot_denoiser_failed_compile_leaves_no_file(tmp_path, monkeypatch):
    """A compile that dies (killed, out of memory) leaves nothing in the cache to be loaded later."""
    from sald_fast import aot

    def fail(program, package_path, **kwargs):
        with open(package_path, "wb") as f:
            f.write(b"half a library")
        raise RuntimeError("compiler killed")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", fail)
    den = _denoiser()
    compiled = aot.AOTDenoiser(den, cache=tmp_path)
    z, t, lengths, context, film = _sampler_inputs(den)
    with torch.no_grad(), pytest.raises(RuntimeError, match="compiler killed"):
        compiled.guided_prediction(z, t, lengths, context, film, 1.5)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_aot_denoiser_equals_eager_and_is_reused_for_new_weights(tmp_path, monkeypatch):
    """The compiled guided step equals the eager one (fp32, 1e-5 of the scale) with lengths and a
    text mask, for two guidance values and three numbers of latent frames from one library (N' is
    dynamic), and step by step through guided_steps with a FiLM table; a second model of the same
    config with other weights loads the same library from the cache (no compile) and gives its own
    eager result."""
    from sald_fast import aot

    den = _denoiser()
    z, t, lengths, context, film = _sampler_inputs(den)

    def eager(model, context, film, guidance, z=z, t=t, lengths=lengths):
        with torch.no_grad():
            eps = model(torch.cat([z, z]), torch.cat([t, t]), lengths=torch.cat([lengths, lengths]),
                        text_context=context, film=film, shared_halves=True).float()
        eps_c, eps_u = eps.chunk(2)
        return eps_u + guidance * (eps_c - eps_u)

    first = aot.AOTDenoiser(den, autotune=False, cache=tmp_path, dynamic_frames=True, freeze=False)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for guidance in (1.5, 3.0):  # a tensor input: one library
            _close(first.guided_prediction(z, t, lengths, context, film, guidance), eager(den, context, film, guidance))
        for n in (3, 11):  # other lengths: the same library
            zn, ln = torch.randn(2, n, *z.shape[2:], generator=g), lengths.clamp(max=n)
            _close(first.guided_prediction(zn, t, ln, context, film, 2.0), eager(den, context, film, 2.0, zn, t, ln))
        table = den.film_parameters(torch.tensor([900, 500, 100]))  # a run of 3 steps
        step = first.guided_steps(z, t, lengths, context, table, 2.5)
        for i, ti in enumerate((900, 500, 100)):
            zi, tt = torch.randn(z.shape, generator=g), torch.full_like(t, ti)
            _close(step(zi, tt, i), eager(den, context, table[i:i + 1], 2.5, zi, tt))
        with pytest.raises(ValueError, match="every step of a run takes z_t"):
            step(z[:, :3], t, 0)
    assert len(first.compiled_signatures) == 1 and len(list(tmp_path.glob("*.pt2"))) == 1

    other = _denoiser()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1 * torch.randn_like(p))
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package",
                        lambda *a, **k: pytest.fail("compiled again for new weights"))
    second = aot.AOTDenoiser(other, autotune=False, cache=tmp_path, dynamic_frames=True, freeze=False)
    _, _, _, context2, film2 = _sampler_inputs(other)
    with torch.no_grad():
        got = second.guided_prediction(z, t, lengths, context2, film2, 1.5)
    _close(got, eager(other, context2, film2, 1.5))
    assert not torch.allclose(got, eager(den, context, film, 1.5))


def test_default_freeze_follows_the_width():
    """Weights are baked into the library by default from a width of 128 (the paper preset's is
    256), not at the tiny preset's (64): the rule the A/Bs in docs/DESIGN.md measured."""
    from sald_fast.aot import AOTDenoiser, default_freeze

    assert default_freeze(preset("paper").denoiser) and not default_freeze(preset("tiny").denoiser)
    assert default_freeze(DenoiserConfig(dim=128)) and not default_freeze(DenoiserConfig(dim=96))
    assert not AOTDenoiser(_denoiser()).freeze and AOTDenoiser(_denoiser(), freeze=True).freeze


@pytest.mark.slow
def test_aot_denoiser_with_frozen_weights_equals_eager_and_is_compiled_per_weights(tmp_path, monkeypatch):
    """freeze=True: the library (weights as constants, Inductor's freezing passes) gives the eager
    guided step (fp32, 1e-5 of the scale) for two guidance values and through guided_steps; a copy
    with the same weights loads it from the cache, a model with other weights never does (it
    compiles its own)."""
    from sald_fast import aot

    den = _denoiser()
    z, t, lengths, context, film = _sampler_inputs(den)

    def eager(model, guidance, context=context, film=film, z=z, t=t):
        with torch.no_grad():
            eps = model(torch.cat([z, z]), torch.cat([t, t]), lengths=torch.cat([lengths, lengths]),
                        text_context=context, film=film, shared_halves=True).float()
        eps_c, eps_u = eps.chunk(2)
        return eps_u + guidance * (eps_c - eps_u)

    first = aot.AOTDenoiser(den, autotune=False, cache=tmp_path, freeze=True)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for guidance in (1.5, 3.0):
            _close(first.guided_prediction(z, t, lengths, context, film, guidance), eager(den, guidance))
        table = den.film_parameters(torch.tensor([900, 100]))
        step = first.guided_steps(z, t, lengths, context, table, 2.5)
        for i, ti in enumerate((900, 100)):
            zi, tt = torch.randn(z.shape, generator=g), torch.full_like(t, ti)
            _close(step(zi, tt, i), eager(den, 2.5, film=table[i:i + 1], z=zi, t=tt))
    assert len(list(tmp_path.glob("*.pt2"))) == 1

    def compile_again(*args, **kwargs):
        raise RuntimeError("compiled again")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", compile_again)
    same = aot.AOTDenoiser(den, autotune=False, cache=tmp_path, freeze=True)
    with torch.no_grad():
        _close(same.guided_prediction(z, t, lengths, context, film, 1.5), eager(den, 1.5))  # loaded, not compiled
        other = _denoiser()
        next(other.parameters()).add_(0.01)  # one weight differs
        with pytest.raises(RuntimeError, match="compiled again"):
            aot.AOTDenoiser(other, autotune=False, cache=tmp_path, freeze=True).guided_prediction(
                z, t, lengths, context, film, 1.5)


@pytest.mark.slow
def test_aot_decoder_equals_eager_for_every_length(tmp_path):
    """One decoder library (dynamic latent frames) gives the eager decode for several lengths;
    shorter than 3 latent frames and calls with gradients run the eager copy."""
    from sald_fast.aot import AOTDecoder

    model = _small_model()
    dec = AOTDecoder(model.vae, autotune=False, cache=tmp_path)
    shape = model.vae.latent_shape
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n in (3, 5, 8, 2):
            z = torch.randn(1, n, *shape, generator=g)
            _close(dec(z), model.decode_latents(z))
        with pytest.raises(ValueError, match="z must have shape"):
            dec(torch.randn(1, 5, shape[0], shape[1] + 1))
    assert dec.compiled_signatures == [(1, *shape, torch.float32)] and len(list(tmp_path.glob("*.pt2"))) == 1
    z = torch.randn(1, 4, *shape, generator=g)
    _close(dec(z), model.decode_latents(z))  # gradients enabled: the eager copy


# ----------------------------------------------------------------------------- auto's remembered choice

def test_auto_choice_is_remembered_and_forgotten_on_register(monkeypatch):
    """resolve remembers auto's choice per (op, inputs); registering an implementation forgets it."""
    cpu = torch.device("cpu")
    first = dispatch.resolve("temporal_attention", "auto", cpu, torch.float32, 7, 16)
    assert ("temporal_attention", dispatch.Inputs("cpu", torch.float32, 7, 16)) in dispatch._auto_choices
    calls = []
    monkeypatch.setitem(dispatch._AUTO_ORDER, "temporal_attention", {"cuda_device": (), "cpu_device": ("cuda",)})
    monkeypatch.setattr(dispatch, "_loaded", dispatch._loaded | {"cuda"})
    monkeypatch.setitem(dispatch._IMPLS["temporal_attention"], "reference", first)
    # remembered: the patched order is not read yet
    assert dispatch.resolve("temporal_attention", "auto", cpu, torch.float32, 7, 16) is first
    dispatch.register("temporal_attention", "cuda", lambda *a: calls.append(a))
    try:
        chosen = dispatch.resolve("temporal_attention", "auto", cpu, torch.float32, 7, 16)
        chosen(1)
        assert calls == [(1,)]  # the new implementation, chosen afresh
    finally:
        dispatch._IMPLS["temporal_attention"].pop("cuda", None)
        dispatch.clear_auto_choices()


def test_aot_cache_key_covers_every_source_file_and_the_inductor_environment(monkeypatch):
    """A library is keyed by every Python file of the package (not a hand-kept list of the traced
    modules) and by the environment variables that change what Inductor generates."""
    from pathlib import Path

    import sald_fast
    from sald_fast import aot

    package = Path(sald_fast.__file__).parent
    hashed = []
    monkeypatch.setattr(Path, "read_bytes", lambda self: hashed.append(self) or b"")
    aot._source_digest.cache_clear()
    try:
        aot._source_digest()
    finally:
        aot._source_digest.cache_clear()
    assert set(hashed) == set(package.rglob("*.py")) and package / "pipeline.py" in hashed
    monkeypatch.setenv("TORCHINDUCTOR_MAX_AUTOTUNE", "0")
    monkeypatch.setenv("UNRELATED_VARIABLE", "1")
    env = aot._compile_env()
    assert env.get("TORCHINDUCTOR_MAX_AUTOTUNE") == "0" and "UNRELATED_VARIABLE" not in env


def _fake_library(path, size: int, age_s: float) -> None:
    import os
    import time
    path.write_bytes(b"\0" * size)
    then = time.time() - age_s
    os.utime(path, (then, then))


def test_prune_cache_deletes_the_least_recently_used_libraries_first(tmp_path):
    """Libraries go oldest use first until the rest fit; a kept path stays whatever its age; a
    compile's temporary file goes once it is over an hour old; other files are not touched."""
    from sald_fast.aot import cache_libraries, prune_cache

    for name, age in (("denoiser-a", 400), ("denoiser-b", 300), ("decoder-c", 200), ("denoiser-d", 100)):
        _fake_library(tmp_path / f"{name}.pt2", 100, age)
    _fake_library(tmp_path / "denoiser-e.tmp123.pt2", 100, 7200)  # left by a killed compile
    _fake_library(tmp_path / "denoiser-f.tmp456.pt2", 100, 10)  # a compile running now
    _fake_library(tmp_path / "notes.txt", 1000, 9999)
    removed = prune_cache(max_bytes=250, folder=tmp_path, keep=(tmp_path / "denoiser-a.pt2",))
    assert sorted(p.name for p in removed) == ["decoder-c.pt2", "denoiser-b.pt2", "denoiser-e.tmp123.pt2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["denoiser-a.pt2", "denoiser-d.pt2",
                                                          "denoiser-f.tmp456.pt2", "notes.txt"]
    assert [(p.name, size) for p, size in cache_libraries(tmp_path)] == [("denoiser-a.pt2", 100),
                                                                          ("denoiser-d.pt2", 100)]  # oldest use first
    assert prune_cache(max_bytes=1000, folder=tmp_path) == []  # within the limit: nothing
    assert prune_cache(folder=tmp_path / "missing") == []
    with pytest.raises(ValueError, match="max_bytes"):
        prune_cache(max_bytes=-5, folder=tmp_path)


def test_cache_limit_comes_from_the_environment(monkeypatch):
    from sald_fast import aot

    monkeypatch.delenv("SALD_FAST_CACHE_MAX_MB", raising=False)
    assert aot.cache_limit_bytes() == aot.DEFAULT_CACHE_LIMIT_MB * 2 ** 20
    monkeypatch.setenv("SALD_FAST_CACHE_MAX_MB", "100")
    assert aot.cache_limit_bytes() == 100 * 2 ** 20
    monkeypatch.setenv("SALD_FAST_CACHE_MAX_MB", "0")
    assert aot.cache_limit_bytes() is None
    for bad in ("-3", "lots", "1.5"):
        monkeypatch.setenv("SALD_FAST_CACHE_MAX_MB", bad)
        with pytest.raises(ValueError, match="SALD_FAST_CACHE_MAX_MB"):
            aot.cache_limit_bytes()


def test_a_compile_prunes_the_cache_and_a_load_renews_the_use_time(tmp_path, monkeypatch):
    """After a compile the cache is cut to its limit (the new library kept), a load marks the
    library as just used, a bad limit fails before compiling, and a library deleted by another
    process between the check and the load is compiled again."""
    import os
    import types

    from sald_fast import aot

    compiled, loads = [], []

    def fake_compile(kind, path, *args):
        compiled.append(path)
        _fake_library(path, 2 ** 20, 0)

    def fake_load(path):
        loads.append(path)
        if not os.path.exists(path):
            raise RuntimeError(f"no such package {path}")
        return types.SimpleNamespace(loader=types.SimpleNamespace(boxed_run=lambda flat: [flat[0]]))

    monkeypatch.setattr(aot, "_compile", fake_compile)
    monkeypatch.setattr(torch._inductor, "aoti_load_package", fake_load)
    monkeypatch.setenv("SALD_FAST_CACHE_MAX_MB", "2")
    for name, age in (("denoiser-old", 300), ("denoiser-newer", 200)):
        _fake_library(tmp_path / f"{name}.pt2", 2 ** 20, age)
    den = _denoiser()
    z, t, lengths, context, film = _sampler_inputs(den)
    with torch.no_grad():
        aot.AOTDenoiser(den, cache=tmp_path, freeze=False).guided_prediction(z, t, lengths, context, film, 1.5)
    (library,) = compiled
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["denoiser-newer.pt2", library.name])

    _fake_library(library, 2 ** 20, 500)  # used long ago: a load renews it
    with torch.no_grad():
        aot.AOTDenoiser(den, cache=tmp_path, freeze=False).guided_prediction(z, t, lengths, context, film, 1.5)
    assert len(compiled) == 1 and library.stat().st_mtime > (tmp_path / "denoiser-newer.pt2").stat().st_mtime

    real_touch = aot._touch
    monkeypatch.setattr(aot, "_touch", lambda path: (real_touch(path), path.unlink()))  # pruned right after the check
    with torch.no_grad():
        aot.AOTDenoiser(den, cache=tmp_path, freeze=False).guided_prediction(z, t, lengths, context, film, 1.5)
    assert compiled == [library, library] and library.is_file()

    monkeypatch.setenv("SALD_FAST_CACHE_MAX_MB", "plenty")
    library.unlink()
    with torch.no_grad(), pytest.raises(ValueError, match="SALD_FAST_CACHE_MAX_MB"):
        aot.AOTDenoiser(den, cache=tmp_path, freeze=False).guided_prediction(z, t, lengths, context, film, 1.5)
    assert len(compiled) == 2


def test_cache_command_shows_prunes_and_clears(tmp_path, monkeypatch, capsys):
    """``sald-fast cache`` reports the libraries and the limit without touching them, ``--prune``
    cuts to the limit (oldest use first), ``--clear`` deletes every library, and a bad limit is one
    error line with exit code 2."""
    from sald_fast.cli import main

    monkeypatch.setenv("SALD_FAST_CACHE", str(tmp_path))
    monkeypatch.setenv("SALD_FAST_CACHE_MAX_MB", "2")
    folder = tmp_path / "aoti"
    folder.mkdir()
    for name, age in (("denoiser-a", 300), ("denoiser-b", 200), ("decoder-c", 100)):
        _fake_library(folder / f"{name}.pt2", 2 ** 20, age)
    assert main(["cache"]) == 0
    out = capsys.readouterr().out
    assert "3 (1 decoder, 2 denoiser), 3.0 MB; limit 2 MB" in out and len(list(folder.iterdir())) == 3
    assert main(["cache", "--prune"]) == 0
    assert "deleted 1 file(s)" in capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == ["decoder-c.pt2", "denoiser-b.pt2"]
    assert main(["cache", "--clear"]) == 0
    assert "deleted 2 file(s)" in capsys.readouterr().out and list(folder.iterdir()) == []
    monkeypatch.setenv("SALD_FAST_CACHE_MAX_MB", "big")
    assert main(["cache"]) == 2
    assert capsys.readouterr().err.startswith("error: SALD_FAST_CACHE_MAX_MB")

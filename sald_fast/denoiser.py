"""The Sign-SALD denoiser on skeleton-aware latents (paper section 2.2): predicts eps (the paper),
z0 or v, as ``DiffusionConfig.prediction_type`` says.

``Denoiser(config)(z_t, t, text, text_mask, lengths, drop_text) -> prediction``, all (B, N', J', d_z).

Each of the L layers applies, in order, k = 1..4: ``z = z + FiLM_k(A_k(LN_k(z)), t)`` with
A_1 temporal attention (over N' for every joint, keys past ``lengths`` masked), A_2 skeletal
attention (over J' for every frame), A_3 cross-attention to the text token features and A_4 an
FFN. ``FiLM_k(h, t) = gamma_k(t) * h + beta_k(t)``, broadcast over N' and J'. The residual add,
the FiLM and the *next* LayerNorm run as one op (``sald_fast.ops.film_residual_layernorm``), and
temporal / skeletal attention read q, k, v as strided views of one fused projection
(``sald_fast.ops.temporal_attention`` / ``skeletal_attention``), so a fast backend replaces them
with no change to the model or its state_dict. Long skips add ``Linear(out of layer l)`` to the
input of layer ``l + tau``. A learned null text token stands in for the text when the condition
is dropped (classifier-free guidance).

The paper's Table 3 variants are config switches (:class:`~sald_fast.config.DenoiserConfig`):
``temporal_attention`` / ``skeletal_attention`` False drop A_1 / A_2 (with their LayerNorm and
FiLM) from every layer; ``text_conditioning="concat"`` replaces A_3 by ``text_concat``:
``Linear([y, s])`` with s the mean of the text token features (a sentence-level feature).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import ops
from .checkpoint import VariantCheckedLoad
from .config import DenoiserConfig
from .ops.dispatch import BackendAttribute
from .profiling import nvtx_range

__all__ = ["Denoiser", "DenoiserLayer", "TextConcat", "TextContext", "timestep_embedding", "sinusoidal_positions"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: t (B,) -> (B, dim) float32.

    ``[cos(t * f_i), sin(t * f_i)]`` with ``f_i = max_period ** (-i / half)``, i < half = dim // 2
    (a zero column is appended when dim is odd).
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.to(torch.float32)[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def sinusoidal_positions(num_positions: int, dim: int) -> torch.Tensor:
    """Fixed sinusoidal position table (num_positions, dim) float32 (Vaswani et al.)."""
    return timestep_embedding(torch.arange(num_positions, dtype=torch.float32), dim)


@dataclass
class TextContext:
    """Cross-attention keys/values of every layer for a fixed text, reusable across sampling steps.

    keys[l], values[l]: (B, H, L, d) in the model's dtype; mask: (B, 1, 1, L) bool (True = attend)
    or None (every key real). With ``text_conditioning="concat"``, keys[l] is instead the sentence
    feature's term (B, 1, 1, D) of layer l's :class:`TextConcat`, values is empty and mask None.
    Build with :meth:`Denoiser.encode_text`; valid until the weights change.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    mask: torch.Tensor | None

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]


class AxisAttention(nn.Module):
    """Self-attention along one axis of (B, N, J, D): ``axis="temporal"`` (over N) or ``"skeletal"`` (over J).

    One fused ``qkv`` projection (D -> 3D); q, k, v are strided (B, N, J, H, d) views into it,
    handed to the op without permute copies; then the output projection ``proj`` (D -> D).
    """

    def __init__(self, dim: int, num_heads: int, axis: str) -> None:
        super().__init__()
        if axis not in ("temporal", "skeletal"):
            raise ValueError(f"axis must be 'temporal' or 'skeletal', got {axis!r}")
        self.axis = axis
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None, backend: str | None) -> torch.Tensor:
        """x: (B, N, J, D); lengths: (B,) valid frames (temporal only) -> (B, N, J, D)."""
        B, N, J, D = x.shape
        H = self.num_heads
        qkv = self.qkv(x).view(B, N, J, 3, H, D // H)
        q, k, v = qkv.unbind(dim=3)  # each (B, N, J, H, d), strided views
        if self.axis == "temporal":
            o = ops.temporal_attention(q, k, v, lengths, backend=backend)
        else:
            o = ops.skeletal_attention(q, k, v, backend=backend)
        return self.proj(o.reshape(B, N, J, D))


class CrossAttention(nn.Module):
    """Cross-attention from latent tokens to text tokens (``F.scaled_dot_product_attention``).

    ``q``: D -> D on the (LayerNormed) latent tokens; ``kv``: text_dim -> 2D on the text features;
    ``proj``: D -> D.
    """

    def __init__(self, dim: int, text_dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(text_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def text_kv(self, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """text (B, L, text_dim) -> keys, values (B, H, L, d)."""
        B, L, _ = text.shape
        H = self.num_heads
        kv = self.kv(text).view(B, L, 2, H, -1).permute(2, 0, 3, 1, 4)
        return kv[0], kv[1]

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                mask: torch.Tensor | None) -> torch.Tensor:
        """x: (B, N, J, D); keys/values (B, H, L, d); mask (B, 1, 1, L) bool or None -> (B, N, J, D)."""
        B, N, J, D = x.shape
        H = self.num_heads
        q = self.q(x).view(B, N * J, H, D // H).transpose(1, 2)  # (B, H, N*J, d)
        keys, values = keys.to(q.dtype), values.to(q.dtype)
        if q.device.type == "cpu" and torch.compiler.is_compiling():
            # the same softmax(q k^T / sqrt(d)) v, as ops inductor fuses: on the CPU the flash kernel
            # costs ~0.1 ms a call at sampling sizes (one-off profile: 17% of a compiled tiny DDIM-50 run)
            s = torch.matmul(q, keys.transpose(-1, -2)) * (D // H) ** -0.5
            if mask is not None:
                s = s.masked_fill(~mask, float("-inf"))
            o = torch.matmul(torch.softmax(s, dim=-1), values)
        else:
            o = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask)
        return self.proj(o.transpose(1, 2).reshape(B, N, J, D))

    def single_token_output(self, values: torch.Tensor) -> torch.Tensor:
        """The output for a text of one attended token, whatever the query: its value, projected.
        values (B, H, d) of that token -> (B, D)."""
        B, H, d = values.shape
        return self.proj(values.reshape(B, H * d))


class TextConcat(nn.Module):
    """Table 3's "w/o CrossAttn" text conditioning: ``proj([y, s])`` (D + text_dim -> D) with the
    sentence feature s (B, text_dim) broadcast to every token of y (B, N, J, D). Computed as
    ``y W_y^T + (s W_s^T + b)``: the text term is made once per sampling run (:meth:`text_term`)."""

    def __init__(self, dim: int, text_dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.proj = nn.Linear(dim + text_dim, dim)

    def text_term(self, sentence: torch.Tensor) -> torch.Tensor:
        """sentence (B, text_dim) -> (B, 1, 1, D): the sentence's part of the projection, bias included."""
        term = F.linear(sentence, self.proj.weight[:, self.dim:], self.proj.bias)
        return term[:, None, None, :]

    def forward(self, y: torch.Tensor, term: torch.Tensor) -> torch.Tensor:
        """y (B, N, J, D), term (B, 1, 1, D) from :meth:`text_term` -> (B, N, J, D)."""
        return F.linear(y, self.proj.weight[:, :self.dim]) + term.to(y.dtype)


class DenoiserLayer(nn.Module):
    """One layer: temporal attention -> skeletal attention -> cross-attention -> FFN.

    The full model's sub-blocks, in order, are :data:`SUB_BLOCKS`; ``self.sub_block_names`` are
    this layer's (a Table 3 variant drops "temporal" or "skeletal", or has "text_concat" in place
    of "cross"); :meth:`sub_blocks` gives them as named functions of the normalised stream.
    ``norms[k]`` is the LayerNorm in front of sub-block k; ``film[k]`` maps the timestep
    embedding (B, D_t) to (B, 2D) = (gamma - 1, beta) of sub-block k (zero-initialised: gamma =
    1, beta = 0). The residual updates themselves run in :meth:`Denoiser.forward` (they fuse with
    the next LN).
    """

    SUB_BLOCKS = ("temporal", "skeletal", "cross", "ffn")

    def __init__(self, cfg: DenoiserConfig) -> None:
        super().__init__()
        D = cfg.dim
        names = []
        if cfg.temporal_attention:
            self.temporal = AxisAttention(D, cfg.num_heads, "temporal")
            names.append("temporal")
        if cfg.skeletal_attention:
            self.skeletal = AxisAttention(D, cfg.num_heads, "skeletal")
            names.append("skeletal")
        if cfg.text_conditioning == "cross_attention":
            self.cross = CrossAttention(D, cfg.text_dim, cfg.num_heads)
            names.append("cross")
        else:
            self.text_concat = TextConcat(D, cfg.text_dim)
            names.append("text_concat")
        self.ffn = nn.Sequential(nn.Linear(D, cfg.ffn_mult * D), nn.GELU(), nn.Linear(cfg.ffn_mult * D, D))
        names.append("ffn")
        self.sub_block_names = tuple(names)
        self.norms = nn.ModuleList([nn.LayerNorm(D) for _ in names])
        self.film = nn.ModuleList([nn.Linear(D, 2 * D) for _ in names])
        self.dropout = nn.Dropout(cfg.dropout)

    def sub_blocks(self, lengths: torch.Tensor | None, context: TextContext, layer_index: int,
                   backend: str | None) -> tuple[tuple[str, Callable[[torch.Tensor], torch.Tensor]], ...]:
        """``(name, A)`` per sub-block, in ``self.sub_block_names`` order: ``A`` maps the
        normalised stream y (B, N, J, D) to the update h (B, N, J, D) (dropout included)."""
        def temporal(y: torch.Tensor) -> torch.Tensor:
            return self.dropout(self.temporal(y, lengths, backend))

        def skeletal(y: torch.Tensor) -> torch.Tensor:
            return self.dropout(self.skeletal(y, None, backend))

        def cross(y: torch.Tensor) -> torch.Tensor:
            return self.dropout(self.cross(y, context.keys[layer_index], context.values[layer_index], context.mask))

        def text_concat(y: torch.Tensor) -> torch.Tensor:
            return self.dropout(self.text_concat(y, context.keys[layer_index]))

        def ffn(y: torch.Tensor) -> torch.Tensor:
            return self.dropout(self.ffn(y))

        funcs = {"temporal": temporal, "skeletal": skeletal, "cross": cross, "text_concat": text_concat, "ffn": ffn}
        return tuple((name, funcs[name]) for name in self.sub_block_names)

    def film_params(self, k: int, temb_act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gamma, beta), each (B, D), of sub-block k from SiLU(timestep embedding) (B, D)."""
        delta_gamma, beta = self.film[k](temb_act).chunk(2, dim=-1)
        return 1.0 + delta_gamma, beta

    def film_stack(self, temb_act: torch.Tensor) -> torch.Tensor:
        """Every sub-block's (gamma, beta) at once: SiLU(timestep embedding) (S, D) -> (S, K, 2, D)."""
        return torch.stack([torch.stack(self.film_params(k, temb_act), dim=1) for k in range(len(self.film))], dim=1)


class Denoiser(BackendAttribute, VariantCheckedLoad, nn.Module):
    """Sequential-attention latent denoiser (paper eq. 5-6; docs/DESIGN.md, "Data flow and shapes").

    ``config``: a :class:`~sald_fast.config.DenoiserConfig`. ``backend``: the ``sald_fast.ops``
    backend for the fused ops ("reference", "triton", "cuda", "auto" or None for the process
    default); settable later through ``self.backend``. The state_dict does not depend on it.
    Inputs of any floating dtype are cast to the parameters' dtype; eps comes back in z_t's dtype.
    """

    BACKEND_OPS = ("film_residual_layernorm", "temporal_attention", "skeletal_attention")

    def __init__(self, config: DenoiserConfig, backend: str | None = None) -> None:
        super().__init__()
        if not isinstance(config, DenoiserConfig):
            raise TypeError(f"config must be a DenoiserConfig, got {type(config).__name__}")
        self.config = config
        self.backend = backend
        D, L, tau = config.dim, config.num_layers, config.skip_tau
        self.input_proj = nn.Linear(config.latent_dim, D)
        if config.pos_embedding == "learned":
            self.frame_embedding = nn.Parameter(torch.zeros(config.max_latent_frames, D))
        else:
            self.register_buffer("frame_embedding", sinusoidal_positions(config.max_latent_frames, D),
                                 persistent=False)
        self.joint_embedding = nn.Parameter(torch.zeros(config.num_atoms, D))
        self.time_mlp = nn.Sequential(nn.Linear(D, D), nn.SiLU(), nn.Linear(D, D))
        self.null_text = nn.Parameter(torch.zeros(1, 1, config.text_dim))
        self.layers = nn.ModuleList([DenoiserLayer(config) for _ in range(L)])
        # skips[i]: output of layer i -> added to the input of layer i + tau
        self.skips = nn.ModuleList([nn.Linear(D, D) for _ in range(L - tau)] if 0 < tau < L else [])
        self.out_norm = nn.LayerNorm(D)
        self.out_proj = nn.Linear(D, config.latent_dim)
        self.reset_parameters()

    # ------------------------------------------------------------------ set-up

    def reset_parameters(self) -> None:
        """Linear weights N(0, 0.02), biases 0; embeddings and null token N(0, 0.02); LayerNorm
        (1, 0); FiLM and long-skip projections zero (gamma = 1, beta = 0, skips start closed)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if isinstance(self.frame_embedding, nn.Parameter):
            nn.init.normal_(self.frame_embedding, std=0.02)
        nn.init.normal_(self.joint_embedding, std=0.02)
        nn.init.normal_(self.null_text, std=0.02)
        for layer in self.layers:
            for film in layer.film:
                nn.init.zeros_(film.weight)
                nn.init.zeros_(film.bias)
        for skip in self.skips:
            nn.init.zeros_(skip.weight)
            nn.init.zeros_(skip.bias)

    def _own_variant(self) -> dict:
        c = self.config
        return {"temporal_attention": c.temporal_attention, "skeletal_attention": c.skeletal_attention,
                "text_conditioning": c.text_conditioning, "latent tokens per frame": c.num_atoms,
                "latent channels": c.latent_dim}

    @staticmethod
    def _state_dict_variant(state_dict) -> dict:
        return _denoiser_variant(state_dict)

    def _param_dtype_device(self) -> tuple[torch.dtype, torch.device]:
        p = self.input_proj.weight
        return p.dtype, p.device

    # ------------------------------------------------------------------ text

    def encode_text(self, text: torch.Tensor | None, text_mask: torch.Tensor | None = None,
                    drop_text: torch.Tensor | None = None, batch_size: int | None = None) -> TextContext:
        """Per-layer cross-attention keys/values for ``text``, to reuse over sampling steps.

        text: (B, L, text_dim) float or None (unconditional: the null token, ``batch_size``
        samples, default 1 and broadcast in forward); text_mask: (B, L) bool, True = real token;
        drop_text: (B,) bool, True replaces that sample's text by the null token. Checks metadata
        only: that every sample not dropped has a real token is checked once per batch by the
        callers (:func:`sald_fast.ops.validate_text_mask`, run by the sampler and the trainer's
        datasets; :meth:`validate_values`); a sample without one gets an undefined output.
        """
        dtype, device = self._param_dtype_device()
        if text is None:
            B = 1 if batch_size is None else int(batch_size)
            tokens = self.null_text.expand(B, 1, -1)
            mask = None
        else:
            B = text.shape[0] if batch_size is None else int(batch_size)
            self._check_text(text, text_mask, drop_text, B, device)
            L = text.shape[1]
            tokens = text.to(dtype)
            mask = text_mask
            if drop_text is not None:
                drop = drop_text.view(B, 1)
                tokens = torch.where(drop.view(B, 1, 1), self.null_text.expand(B, L, -1), tokens)
                only_first = torch.arange(L, device=device).view(1, L) == 0
                mask = torch.where(drop, only_first, mask if mask is not None else torch.ones_like(only_first))
            if mask is not None:
                mask = mask.view(B, 1, 1, L)
        if self.config.text_conditioning == "concat":  # sentence feature: mean of the real tokens
            if mask is None:
                sentence = tokens.mean(dim=1)
            else:
                weights = mask.view(B, -1, 1).to(tokens.dtype)
                sentence = (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
            return TextContext([layer.text_concat.text_term(sentence) for layer in self.layers], [], None)
        keys, values = [], []
        for layer in self.layers:
            k, v = layer.cross.text_kv(tokens)
            keys.append(k)
            values.append(v)
        return TextContext(keys, values, mask)

    def _check_text(self, text, text_mask, drop_text, B: int, device: torch.device) -> None:
        cfg = self.config
        if not isinstance(text, torch.Tensor):
            raise TypeError(f"text must be a torch.Tensor (B, L, text_dim) or None, got {type(text).__name__}")
        if not text.is_floating_point():
            raise TypeError(f"text must be a floating tensor, got dtype {text.dtype}")
        if text.dim() != 3 or text.shape[0] != B or text.shape[1] < 1 or text.shape[2] != cfg.text_dim:
            raise ValueError(f"text must be (B={B}, L>=1, text_dim={cfg.text_dim}), got shape {tuple(text.shape)}")
        if text.device != device:
            raise ValueError(f"text is on {text.device} but the model is on {device}")
        if text_mask is not None:
            if not isinstance(text_mask, torch.Tensor) or text_mask.dtype != torch.bool:
                raise TypeError(f"text_mask must be a bool tensor (True = real token), got "
                                f"{getattr(text_mask, 'dtype', type(text_mask).__name__)}")
            if text_mask.shape != text.shape[:2]:
                raise ValueError(f"text_mask must be (B, L) = {tuple(text.shape[:2])}, got {tuple(text_mask.shape)}")
            if text_mask.device != device:
                raise ValueError(f"text_mask is on {text_mask.device} but the model is on {device}")
        self._check_drop(drop_text, B, device)

    @staticmethod
    def _check_drop(drop_text, B: int, device: torch.device) -> None:
        if drop_text is None:
            return
        if not isinstance(drop_text, torch.Tensor) or drop_text.dtype != torch.bool:
            raise TypeError(f"drop_text must be a bool tensor (B,), got "
                            f"{getattr(drop_text, 'dtype', type(drop_text).__name__)}")
        if drop_text.shape != (B,):
            raise ValueError(f"drop_text must be (B,) = ({B},), got {tuple(drop_text.shape)}")
        if drop_text.device != device:
            raise ValueError(f"drop_text is on {drop_text.device} but the model is on {device}")

    # ------------------------------------------------------------------ timesteps

    def film_parameters(self, t: torch.Tensor) -> torch.Tensor:
        """FiLM (gamma, beta) of every sub-block for timesteps ``t`` (S,): (S, F, 2, D), F the
        model's sub-blocks in forward order (layer by layer).

        A sampler computes them once for all its steps and hands row i to :meth:`forward`
        (``film=table[i:i + 1]``), instead of the timestep MLP and F small projections per step.
        """
        _, device = self._param_dtype_device()
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"t must be a 1-D int or float tensor of timesteps, got "
                            f"{getattr(t, 'shape', type(t).__name__)}")
        return self._film_table(t.to(device))

    def _film_table(self, t: torch.Tensor) -> torch.Tensor:
        """t (S,) on the model's device -> (S, F, 2, D)."""
        dtype, _ = self._param_dtype_device()
        temb_act = F.silu(self.time_mlp(timestep_embedding(t, self.config.dim).to(dtype)))
        return torch.cat([layer.film_stack(temb_act) for layer in self.layers], dim=1)

    @property
    def num_film(self) -> int:
        """F: how many FiLM'd sub-blocks the model has (rows of :meth:`film_parameters`)."""
        return sum(len(layer.film) for layer in self.layers)

    # ------------------------------------------------------------------ forward

    def validate_values(self, num_frames: int, lengths: torch.Tensor | None = None,
                        text_mask: torch.Tensor | None = None, drop_text: torch.Tensor | None = None) -> None:
        """Check the values :meth:`forward` does not read (one host synchronisation): ``lengths``
        (B,) in [1, ``num_frames``], and a real token in ``text_mask`` (B, L) for every sample not
        dropped by ``drop_text`` (B,). Call it once per batch at an entry point (the sampler and
        the trainer's datasets do), not per step."""
        B = None if lengths is None else lengths.shape[0]
        ops.validate_lengths(lengths, B if B is not None else 0, int(num_frames), unit="N'")
        ops.validate_text_mask(text_mask, drop_text)

    def _check_inputs(self, z_t, t, text, text_mask, lengths, drop_text,
                      text_context: TextContext | None) -> tuple[torch.Tensor, TextContext | None]:
        """All input checks of :meth:`forward`, on metadata only (shapes, dtypes, devices: no host
        synchronisation, so a step stays capturable). Returns t as a (B,) tensor and the text
        context of batch B when ``text_context`` was given (None: encode ``text``)."""
        cfg = self.config
        dtype, device = self._param_dtype_device()
        if not isinstance(z_t, torch.Tensor):
            raise TypeError(f"z_t must be a torch.Tensor (B, N', J'={cfg.num_atoms}, d_z={cfg.latent_dim}), "
                            f"got {type(z_t).__name__}")
        if not z_t.is_floating_point():
            raise TypeError(f"z_t must be a floating tensor, got dtype {z_t.dtype}")
        if z_t.dim() != 4 or z_t.shape[2] != cfg.num_atoms or z_t.shape[3] != cfg.latent_dim:
            raise ValueError(f"z_t must be (B, N', J'={cfg.num_atoms}, d_z={cfg.latent_dim}), got shape "
                             f"{tuple(z_t.shape)}")
        B, N = z_t.shape[:2]
        if B < 1 or N < 1:
            raise ValueError(f"z_t needs B >= 1 and N' >= 1, got shape {tuple(z_t.shape)}")
        if N > cfg.max_latent_frames:
            raise ValueError(f"z_t has N'={N} latent frames but config.max_latent_frames is {cfg.max_latent_frames}")
        if z_t.device != device:
            raise ValueError(f"z_t is on {z_t.device} but the model is on {device}")
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            t = torch.full((B,), t, device=device)
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"t must be a (B,) tensor of timesteps, got {type(t).__name__}")
        if t.dtype == torch.bool or t.is_complex():
            raise TypeError(f"t must hold int or float timesteps, got dtype {t.dtype}")
        if t.dim() == 0:
            t = t.expand(B)
        if t.shape != (B,):
            raise ValueError(f"t must be (B,) = ({B},), got shape {tuple(t.shape)}")
        if t.device != device:
            raise ValueError(f"t is on {t.device} but the model is on {device}")
        if lengths is not None:
            if not isinstance(lengths, torch.Tensor) or lengths.dtype not in (torch.int32, torch.int64):
                raise TypeError(f"lengths must be an int32/int64 tensor (B,), got "
                                f"{getattr(lengths, 'dtype', type(lengths).__name__)}")
            if lengths.shape != (B,):
                raise ValueError(f"lengths must be (B,) = ({B},), got shape {tuple(lengths.shape)}")
            if lengths.device != device:
                raise ValueError(f"lengths is on {lengths.device} but the model is on {device}")
        if text_context is None:
            if text is None:
                if text_mask is not None:
                    raise ValueError("text_mask was given without text")
                self._check_drop(drop_text, B, device)
            else:
                self._check_text(text, text_mask, drop_text, B, device)
            return t, None
        if text is not None or text_mask is not None or drop_text is not None:
            raise ValueError("give either text_context or text/text_mask/drop_text, not both")
        if not isinstance(text_context, TextContext) or len(text_context.keys) != len(self.layers):
            raise TypeError("text_context must be a TextContext from this model's encode_text")
        if text_context.batch_size not in (1, B):
            raise ValueError(f"text_context has batch {text_context.batch_size}, z_t has B={B}")
        if text_context.batch_size == B:
            return t, text_context
        # a context of batch 1 (e.g. unconditional) serves every sample
        c = text_context
        return t, TextContext([k.expand(B, -1, -1, -1) for k in c.keys], [v.expand(B, -1, -1, -1) for v in c.values],
                              None if c.mask is None else c.mask.expand(B, -1, -1, -1))

    def forward(self, z_t: torch.Tensor, t: torch.Tensor | int | float, text: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None, lengths: torch.Tensor | None = None,
                drop_text: torch.Tensor | None = None, *, text_context: TextContext | None = None,
                film: torch.Tensor | None = None, shared_halves: bool = False,
                null_text_half: bool = False) -> torch.Tensor:
        """Predict the diffusion target of ``z_t`` (the noise, the clean latent or v, as the
        ``DiffusionConfig.prediction_type`` it was trained with says).

        z_t: (B, N', J', d_z) float; t: (B,) int or float timesteps (a scalar is broadcast);
        text: (B, L, text_dim) float or None (unconditional: every sample gets the null token);
        text_mask: (B, L) bool, True = real token (None: all real); lengths: (B,) int in [1, N']
        valid latent frames (None: all; values are not read here -- see :meth:`validate_values`,
        which the sampler and the trainer's datasets run once per batch); drop_text: (B,) bool, True = use the null token for that
        sample. ``text_context`` (keyword): keys/values from :meth:`encode_text` to use instead of
        ``text``/``text_mask``/``drop_text``. ``film`` (keyword): (1 or B, F, 2, D) FiLM parameters of
        ``t`` from :meth:`film_parameters` (then ``t`` itself is not read). ``shared_halves``
        (keyword): the caller promises that the two halves of the batch have the same z_t, t and
        lengths (the conditional and unconditional halves of a classifier-free-guidance batch), so
        the sub-blocks before the first text-conditioned one run once, on the first half, and are
        copied (the same result as running both halves). ``null_text_half`` (keyword, with
        ``shared_halves`` and cross-attention): the caller also promises that the second half's
        text context is the null token alone (``encode_text`` with ``drop_text`` True there), so
        its cross-attention output is that token's projected value for every query, computed once
        per layer instead of attended. Returns the prediction (B, N', J', d_z)
        in z_t's dtype; outputs on valid frames do not depend on the content of padded frames.
        """
        t, context = self._check_inputs(z_t, t, text, text_mask, lengths, drop_text, text_context)
        B, N, J, _ = z_t.shape
        dtype, device = self._param_dtype_device()
        self._check_film(film, shared_halves, B, device)
        null_text = self._check_null_text_half(null_text_half, shared_halves, text_context, B)
        if context is None:
            context = self.encode_text(text, text_mask, drop_text, batch_size=B)
        backend = self.backend
        with nvtx_range("denoiser"):
            # shared halves: the text-independent start runs on the first half (b rows), and the
            # stream is copied to both halves in front of the first text-conditioned sub-block
            b = B // 2 if shared_halves else B
            z = self.input_proj(z_t[:b].to(dtype))
            z = z + self.frame_embedding[:N].to(z.dtype).view(1, N, 1, -1) + self.joint_embedding.view(1, 1, J, -1)
            if film is None:
                film = self._film_table(t)  # (B, F, 2, D)
            first = self.layers[0].norms[0]
            y = F.layer_norm(z, first.normalized_shape, first.weight, first.bias, first.eps)
            outputs: list[torch.Tensor] = []
            tau = self.config.skip_tau
            f = 0  # row of ``film``
            for l, layer in enumerate(self.layers):
                if tau and l >= tau and (l - tau) < len(self.skips):
                    z = z + self.skips[l - tau](outputs[l - tau])
                    ln = layer.norms[0]
                    y = F.layer_norm(z, ln.normalized_shape, ln.weight, ln.bias, ln.eps)
                with nvtx_range(f"denoiser.layer{l}"):
                    last = len(layer.norms) - 1
                    for k, (name, sub_block) in enumerate(layer.sub_blocks(
                            lengths if b == B or lengths is None else lengths[:b], context, l, backend)):
                        if b != B and name in ("cross", "text_concat"):
                            z, y, b = torch.cat([z, z]), torch.cat([y, y]), B
                        if null_text and name == "cross":
                            h = self._cross_with_null_half(layer, l, y, context)
                        else:
                            h = sub_block(y)
                        row = film[:, f]  # (1 or B, 2, D)
                        gamma, beta = (row.expand(b, 2, -1) if row.shape[0] == 1 else row[:b]).unbind(1)
                        f += 1
                        nxt = layer.norms[k + 1] if k < last else (
                            self.layers[l + 1].norms[0] if l + 1 < len(self.layers) else self.out_norm)
                        z, y = ops.film_residual_layernorm(z, h.to(z.dtype), gamma.to(z.dtype), beta.to(z.dtype),
                                                           nxt.weight, nxt.bias, nxt.eps, backend=backend)
                outputs.append(z)
            eps = self.out_proj(y)
        return eps.to(z_t.dtype)

    def _check_null_text_half(self, null_text_half: bool, shared_halves: bool, context: TextContext | None,
                              B: int) -> bool:
        if not null_text_half:
            return False
        if not shared_halves or context is None or self.config.text_conditioning != "cross_attention":
            raise ValueError("null_text_half=True needs shared_halves=True, a text_context and cross-attention "
                             "text conditioning")
        if context.batch_size != B:
            raise ValueError(f"null_text_half=True needs a text_context with a row per sample (B={B}: conditional, "
                             f"then null), got batch {context.batch_size}")
        return True

    def _cross_with_null_half(self, layer: "DenoiserLayer", l: int, y: torch.Tensor,
                              context: TextContext) -> torch.Tensor:
        """Cross-attention of y (B, N, J, D) whose second half attends to the null token alone: the
        first half attended, the second half the null token's projected value (the same result)."""
        B, N, J, D = y.shape
        half = B // 2
        keys, values, mask = context.keys[l], context.values[l], context.mask
        h_c = layer.cross(y[:half], keys[:half], values[:half], None if mask is None else mask[:half])
        h_u = layer.cross.single_token_output(values[half:, :, 0].to(y.dtype))  # (B - half, D)
        return layer.dropout(torch.cat([h_c, h_u.view(B - half, 1, 1, D).expand(B - half, N, J, D)]))

    def _check_film(self, film: torch.Tensor | None, shared_halves: bool, B: int, device: torch.device) -> None:
        if shared_halves and B % 2:
            raise ValueError(f"shared_halves=True needs an even batch (two equal halves), got B={B}")
        if film is None:
            return
        shape = (self.num_film, 2, self.config.dim)
        if not isinstance(film, torch.Tensor) or not film.is_floating_point():
            raise TypeError(f"film must be a floating tensor (1 or B, F, 2, D) from film_parameters, got "
                            f"{getattr(film, 'dtype', type(film).__name__)}")
        if film.dim() != 4 or film.shape[0] not in (1, B) or tuple(film.shape[1:]) != shape:
            raise ValueError(f"film must be (1 or B={B}, F, 2, D) = (1 or {B}, {', '.join(map(str, shape))}), "
                             f"got shape {tuple(film.shape)}")
        if film.device != device:
            raise ValueError(f"film is on {film.device} but the model is on {device}")


def _denoiser_variant(state_dict) -> dict:
    """The Table 3 switches a Denoiser state_dict was made with (None where it cannot tell)."""
    keys = set(state_dict)
    layered = any(k.startswith("layers.0.") for k in keys)
    conditioning = None
    if "layers.0.text_concat.proj.weight" in keys:
        conditioning = "concat"
    elif "layers.0.cross.q.weight" in keys:
        conditioning = "cross_attention"
    joint = state_dict.get("joint_embedding")
    proj = state_dict.get("input_proj.weight")
    return {"temporal_attention": ("layers.0.temporal.qkv.weight" in keys) if layered else None,
            "skeletal_attention": ("layers.0.skeletal.qkv.weight" in keys) if layered else None,
            "text_conditioning": conditioning,
            "latent tokens per frame": None if joint is None else int(joint.shape[0]),
            "latent channels": None if proj is None else int(proj.shape[1])}

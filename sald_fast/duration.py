"""Sentence duration from the text: a ridge regression on the frozen text encoder's features.

Inputs per sentence: the masked mean of its token features (dim), its token count and its word
count, standardised; output: the number of frames of the signing (at the training fps). Fitting
is closed form (one (dim+2)^2 solve: the bias is the mean length), so it costs the text encoding of the training sentences
(cached by the encoder after the denoiser's training) and milliseconds more. Stored in the
SignSALD checkpoint as the tensor group ``duration`` (buffers below); a checkpoint without it
loads with ``model.duration = None``.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .text import TextEncoder

__all__ = ["DurationModel", "sentence_features"]


def sentence_features(encoder: TextEncoder, texts: Sequence[str], batch: int = 256) -> torch.Tensor:
    """(B, dim + 2) float64 CPU: mean token feature, token count, word count per sentence."""
    out = []
    for i in range(0, len(texts), batch):
        chunk = list(texts[i:i + batch])
        feats, mask = encoder.encode(chunk)
        feats, mask = feats.detach().double().cpu(), mask.cpu()
        tokens = mask.sum(1, keepdim=True).double()
        mean = (feats * mask[..., None]).sum(1) / tokens.clamp_min(1)
        words = torch.tensor([[float(len(t.split()))] for t in chunk], dtype=torch.float64)
        out.append(torch.cat([mean, tokens, words], 1))
    return torch.cat(out)


class DurationModel(nn.Module):
    """Frames of a sentence's signing from its text features (buffers only, no parameters).

    Buffers: ``mean`` / ``std`` (F,) input standardisation, ``weight`` (F,), ``bias`` (),
    ``min_frames`` / ``max_frames`` () the range predictions are clipped to (the training
    lengths' range). ``F = dim + 2``.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__()
        for name, shape in (("mean", (num_features,)), ("std", (num_features,)), ("weight", (num_features,)),
                            ("bias", ()), ("min_frames", ()), ("max_frames", ())):
            self.register_buffer(name, torch.zeros(shape, dtype=torch.float64))
        self.std.fill_(1.0)

    @classmethod
    def fit(cls, encoder: TextEncoder, texts: Sequence[str], frames: Sequence[int], ridge: float = 10.0
            ) -> "DurationModel":
        """Ridge regression of ``frames`` (number of frames per sentence) on the sentences'
        :func:`sentence_features` (closed form; ``ridge`` on the standardised inputs)."""
        if len(texts) != len(frames) or len(texts) < 2:
            raise ValueError(f"DurationModel.fit needs >= 2 sentences and one length each, got {len(texts)} "
                             f"texts and {len(frames)} lengths")
        x = sentence_features(encoder, texts)
        y = torch.as_tensor(list(frames), dtype=torch.float64)
        model = cls(x.shape[1])
        model.mean.copy_(x.mean(0))
        model.std.copy_(x.std(0).clamp_min(1e-6))
        xs = (x - model.mean) / model.std
        yc = y - y.mean()
        a = xs.T @ xs + ridge * torch.eye(x.shape[1], dtype=torch.float64)
        model.weight.copy_(torch.linalg.solve(a, xs.T @ yc))
        model.bias.fill_(float(y.mean()))
        model.min_frames.fill_(float(y.min()))
        model.max_frames.fill_(float(y.max()))
        return model

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F) sentence features -> (B,) predicted frames (float64, clipped to the range)."""
        x = (features.to(self.mean) - self.mean) / self.std
        return (x @ self.weight + self.bias).clamp(self.min_frames, self.max_frames)

    def predict(self, encoder: TextEncoder, texts: Sequence[str], max_frames: int | None = None) -> torch.Tensor:
        """(B,) int64 predicted frames for ``texts`` (>= 1, <= ``max_frames`` when given)."""
        n = self(sentence_features(encoder, texts).to(self.mean.device)).round().long().cpu().clamp_min(1)
        return n.clamp_max(max_frames) if max_frames is not None else n

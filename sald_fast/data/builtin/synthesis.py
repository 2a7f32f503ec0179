"""Sentences to motion: signer variation, the vectorised synthesis of a batch of sentences
(rest, signs and minimum-jerk transitions -> controls -> IK -> SMPL-X axis-angle),
:func:`synthesize` for one gloss sequence and :func:`alternate_renditions`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..dataset import resample_clip
from .arm_hand import _SLOTS, _arm_pose, _hand_pose, _mirror_aa
from .controls import _TRANSITION_SPEED, _controls, _minjerk, _transition_distances
from .grammar import _WH, _YES_NO, _pool_index, normalize_text, sentence_pool
from .lexicon import _REST_INDEX, _WORD_INDEX, FPS, VERSION, VOCABULARY, _tables


@dataclass(frozen=True)
class _Variation:
    """Signer variation of a batch of sentences (arrays over sentences)."""

    speed: np.ndarray
    amp: np.ndarray
    loc_offset: np.ndarray
    swivel: np.ndarray
    noise_amp: np.ndarray
    noise_freq: np.ndarray
    noise_phase: np.ndarray
    sway_amp: np.ndarray
    sway_freq: np.ndarray
    sway_phase: np.ndarray
    yaw: np.ndarray
    transl: np.ndarray
    head: np.ndarray
    sign_jitter: np.ndarray
    trans_frames: np.ndarray
    rest_frames: np.ndarray


def _draw_variation(rng: np.random.Generator, n: int, max_signs: int, variation: float) -> _Variation:
    v = float(variation)
    return _Variation(
        speed=1.05 + v * rng.uniform(-0.15, 0.2, n),
        amp=1.0 + v * rng.uniform(-0.2, 0.2, n),
        loc_offset=v * rng.normal(0.0, 0.012, (n, 3)),
        swivel=v * rng.uniform(-0.25, 0.25, (n, 2)),
        noise_amp=v * rng.uniform(0.001, 0.004, (n, 2, 6)),
        noise_freq=rng.uniform(0.4, 1.8, (n, 2, 6)),
        noise_phase=rng.uniform(0, 2 * np.pi, (n, 2, 6)),
        sway_amp=v * rng.uniform(0.005, 0.03, (n, 3)),
        sway_freq=rng.uniform(0.15, 0.45, (n, 3)),
        sway_phase=rng.uniform(0, 2 * np.pi, (n, 3)),
        yaw=v * rng.normal(0.0, 0.05, n),
        transl=v * rng.normal(0.0, 0.01, (n, 3)),
        head=v * rng.normal(0.0, 0.04, (n, 2)),
        sign_jitter=1.0 + v * rng.uniform(-0.1, 0.1, (n, max_signs)),
        trans_frames=2.0 + v * rng.uniform(-0.5, 1.5, (n, max_signs + 1)),
        rest_frames=np.round(2.5 + v * rng.uniform(-0.5, 2.0, (n, 2))),
    )


def _synthesize_batch(sentences: Sequence[tuple[Sequence[str], int]],
                      var: _Variation) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Motion of sentences ``[(glosses, kind)]``: poses (F, 52, 3) float32 axis-angle
    [global_orient, body_pose, left hand, right hand], transl (F, 3) float32 and per-sentence
    frame offsets (n + 1,)."""
    t = _tables()
    ends = _transition_distances()
    # segments: (sentence, word a, word b, frames, kind 0 = sign/rest hold, 1 = transition)
    seg_s, seg_a, seg_b, seg_n, seg_k = [], [], [], [], []
    for s, (glosses, _) in enumerate(sentences):
        words = [_WORD_INDEX[g] for g in glosses]
        speed = var.speed[s]
        chain = [_REST_INDEX] + words + [_REST_INDEX]
        for i, w in enumerate(chain):
            if i == 0 or i == len(chain) - 1:
                n = int(var.rest_frames[s, 0 if i == 0 else 1])
            else:
                n = int(round(t["dur"][w] * var.sign_jitter[s, i - 1] / speed))
            seg_s.append(s), seg_a.append(w), seg_b.append(w), seg_n.append(max(n, 3)), seg_k.append(0)
            if i < len(chain) - 1:  # transitions take longer over longer distances
                n = int(round((var.trans_frames[s, i] + FPS * ends[w, chain[i + 1]] / _TRANSITION_SPEED) / speed))
                seg_s.append(s), seg_a.append(w), seg_b.append(chain[i + 1]), seg_n.append(max(n, 2)), seg_k.append(1)
    seg_n_arr = np.asarray(seg_n)
    F = int(seg_n_arr.sum())
    seg = np.repeat(np.arange(len(seg_n)), seg_n_arr)
    starts = np.concatenate([[0], np.cumsum(seg_n_arr)[:-1]])
    k = np.arange(F) - starts[seg]
    n = seg_n_arr[seg].astype(np.float64)
    kind = np.asarray(seg_k)[seg]
    sent = np.asarray(seg_s)[seg]
    wa, wb = np.asarray(seg_a)[seg], np.asarray(seg_b)[seg]
    u_sign = k / np.maximum(n - 1, 1)
    tau = (k + 1) / (n + 1)
    ua = np.where(kind == 1, 1.0, u_sign)
    ub = np.where(kind == 1, 0.0, u_sign)
    blend = np.where(kind == 1, _minjerk(tau), 0.0)[:, None]
    qp = np.array([0.12 if kind_ == _YES_NO else (0.05 if kind_ == _WH else 0.0) for _, kind_ in sentences])[sent]
    amp, loc_off = var.amp[sent], var.loc_offset[sent]
    ca = _controls(t, wa, ua, amp, loc_off, qp)
    cb = _controls(t, wb, ub, amp, loc_off, qp)
    c = ca * (1.0 - blend) + cb * blend
    del ca, cb
    # time within the sentence, for noise and sway
    sent_start = np.concatenate([[0], np.cumsum(np.bincount(sent, minlength=len(sentences)))])
    time = (np.arange(F) - sent_start[sent]) / FPS
    noise = (var.noise_amp[sent] * np.sin(2 * np.pi * var.noise_freq[sent] * time[:, None, None]
                                          + var.noise_phase[sent])).sum(1)
    right, left = c[:, 0:3] + noise[:, 0:3], c[:, 3:6] + noise[:, 3:6]
    hs_r, palm_r, hs_l, palm_l = c[:, 6:17], c[:, 17:20], c[:, 20:31], c[:, 31:34]
    head = c[:, 34:36] + var.head[sent]
    sway = var.sway_amp[sent] * np.sin(2 * np.pi * var.sway_freq[sent] * time[:, None] + var.sway_phase[sent])

    poses = np.zeros((F, 52, 3))
    swivel = var.swivel[sent]
    lift_r = 0.8 * np.maximum(right[:, 1] - 0.45, 0.0)  # raise the elbow for high targets
    lift_l = 0.8 * np.maximum(left[:, 1] - 0.45, 0.0)
    sh_l, el_l = _arm_pose(left, swivel[:, 1] + lift_l)
    sh_r, el_r = _arm_pose(right * np.array([-1.0, 1.0, 1.0]), swivel[:, 0] + lift_r)
    wr_l, fi_l = _hand_pose(hs_l, palm_l)
    wr_r, fi_r = _hand_pose(hs_r, palm_r)
    poses[:, _SLOTS["left_shoulder"]], poses[:, _SLOTS["left_elbow"]], poses[:, _SLOTS["left_wrist"]] = sh_l, el_l, wr_l
    poses[:, _SLOTS["right_shoulder"]] = _mirror_aa(sh_r)
    poses[:, _SLOTS["right_elbow"]] = _mirror_aa(el_r)
    poses[:, _SLOTS["right_wrist"]] = _mirror_aa(wr_r)
    poses[:, _SLOTS["left_index1"]:_SLOTS["left_index1"] + 15] = fi_l
    poses[:, _SLOTS["right_index1"]:_SLOTS["right_index1"] + 15] = _mirror_aa(fi_r)
    # body sway (pitch, yaw, roll) shared over the three spine joints; the IK targets live in the
    # spine3 frame so the hands follow the torso
    for j in ("spine1", "spine2", "spine3"):
        poses[:, _SLOTS[j]] = sway / 3.0
    head_aa = np.stack([head[:, 0], head[:, 1], np.zeros(F)], axis=1)
    poses[:, _SLOTS["neck"]] = 0.4 * head_aa
    poses[:, _SLOTS["head"]] = 0.6 * head_aa
    poses[:, 0, 1] = var.yaw[sent]
    transl = var.transl[sent] + 0.3 * sway[:, [1, 0, 2]] * np.array([0.1, 0.02, 0.1])
    return poses.astype(np.float32), transl.astype(np.float32), sent_start


def synthesize(glosses: Sequence[str], seed: int = 0, variation: float = 1.0, kind: int = 0,
               text: str | None = None) -> dict[str, Any]:
    """One clip signing ``glosses`` (lexicon words, in signing order).

    ``variation`` scales the signer variation (0: the canonical signer, 1: the corpus' spread);
    ``kind`` 0 statement, 1 wh-question, 2 yes/no question. The clip's text is ``text`` or the
    glosses joined by spaces.
    """
    glosses = list(glosses)
    if not glosses:
        raise ValueError("glosses must name at least one sign")
    for g in glosses:
        if g not in VOCABULARY:
            raise ValueError(f"unknown sign {g!r}; see sald_fast.data.builtin.VOCABULARY")
    var = _draw_variation(np.random.default_rng(seed), 1, len(glosses), variation)
    poses, transl, _ = _synthesize_batch([(glosses, kind)], var)
    return _clip(poses, transl, text or " ".join(glosses), "synthesized", glosses)


_ALT_STREAM = 0x616C74  # "alt": the random streams of alternate renditions, apart from the corpus'


def alternate_renditions(clips: Sequence[Mapping[str, Any]], seed: int = 1,
                         variation: float = 1.0) -> list[dict[str, Any]]:
    """Another signing of each built-in clip's sentence: the same signs, another signer variation.

    For each clip (a built-in corpus clip, or any clip whose ``text`` is a sentence of the
    grammar, see :func:`sentence_pool`), the sentence is synthesised again from its ``glosses``
    (the grammar's, when the clip has none) and its sentence kind (recovered from the text:
    statement / wh-question / yes-no question) with a fresh signer variation (``variation``
    scales it as in :func:`builtin_corpus`). The result is what a perfect text-to-sign model
    could output: a correct but different rendition. The two renditions differ in speed,
    amplitude, sign and transition timing, rest frames, signing-space offset, elbow swivel,
    noise and body sway, so **their lengths differ** (compare them after time alignment).

    Deterministic: clip ``i``'s rendition depends only on (``seed``, its sentence,
    ``variation``, :data:`VERSION`), not on the other clips or their order; the streams differ
    from the corpus' own, so even ``seed`` equal to the corpus seed gives another signing.
    Clips keep ``text`` and ``glosses``; ``name`` gets the suffix ``_alt``; a clip at another
    frame rate than :data:`FPS` (see :func:`sald_fast.data.load_clips`'s ``fps``) gets its
    rendition resampled to that rate. Synthesis is vectorised (batches of 256 sentences).
    Raises KeyError for a text the grammar does not make, ValueError for unknown glosses.
    """
    clips = list(clips)
    pool, index = sentence_pool(), _pool_index()
    sentences: list[tuple[list[str], int]] = []
    draws: list[_Variation] = []
    for i, clip in enumerate(clips):
        text = str(clip["text"])
        j = index.get(normalize_text(text))
        if j is None:
            raise KeyError(f"clips[{i}] ({clip.get('name', '?')}): {text!r} is not a sentence of the built-in grammar")
        g = clip.get("glosses")
        glosses = (str(g).split() if isinstance(g, str) else list(g)) if g is not None else list(pool[j][1])
        for w in glosses:
            if w not in VOCABULARY:
                raise ValueError(f"clips[{i}]: unknown sign {w!r}; see sald_fast.data.builtin.VOCABULARY")
        if not glosses:
            raise ValueError(f"clips[{i}]: no glosses")
        sentences.append((glosses, pool[j][2]))
        # one stream per sentence (its pool index): independent of the other clips
        rng = np.random.default_rng([int(seed), VERSION, _ALT_STREAM, j])
        draws.append(_draw_variation(rng, 1, len(glosses), variation))
    if not clips:
        return []
    max_signs = max(len(g) for g, _ in sentences)

    def field(name: str, sl: slice) -> np.ndarray:
        parts = [getattr(d, name) for d in draws[sl]]
        if name in ("sign_jitter", "trans_frames"):  # per-sign columns: pad (the padding is never read)
            width = max_signs + (name == "trans_frames")
            parts = [np.pad(p, ((0, 0), (0, width - p.shape[1])), mode="edge") for p in parts]
        return np.concatenate(parts)

    out: list[dict[str, Any]] = []
    chunk = 256
    for c0 in range(0, len(clips), chunk):
        sl = slice(c0, c0 + chunk)
        var = _Variation(**{f: field(f, sl) for f in _Variation.__dataclass_fields__})
        poses, transl, starts = _synthesize_batch(sentences[sl], var)
        for k, clip in enumerate(clips[sl]):
            a, b = int(starts[k]), int(starts[k + 1])
            glosses = sentences[c0 + k][0]
            alt = _clip(poses[a:b], transl[a:b], str(clip["text"]), f"{clip.get('name', 'clip')}_alt", glosses)
            fps = float(clip.get("fps", FPS))
            if abs(fps - FPS) > 1e-9:
                alt = resample_clip(alt, fps)
            out.append(alt)
    return out


def _clip(poses: np.ndarray, transl: np.ndarray, text: str, name: str, glosses: Sequence[str]) -> dict[str, Any]:
    return {
        "name": name, "text": text, "fps": FPS, "glosses": " ".join(glosses),
        "global_orient": poses[:, 0], "body_pose": poses[:, 1:22], "left_hand_pose": poses[:, 22:37],
        "right_hand_pose": poses[:, 37:52], "transl": transl,
    }

"""Per-frame controls of signs: where each wrist is (location + path displacement), the
handshapes and wrist angles, head pitch and yaw, for words at phases in [0, 1]; and the
distances between consecutive signs that set the transition lengths (co-articulation)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .lexicon import _BASE_OFFSET, _HANDS, _MODIFIERS, _REST_INDEX, _WORDS, HANDSHAPES, LOCATIONS, PALMS, _tables


def _minjerk(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * x * (10.0 - 15.0 * x + 6.0 * x * x)


def _displacement(t: dict[str, np.ndarray], w: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Path displacement (F, 3), ipsilateral coordinates, of words ``w`` at phases ``u``."""
    path, reps = t["path"][w], t["reps"][w]
    amp = t["amp"][w][:, None]
    dv, pv = t["dir"][w], t["perp"][w]
    s = _minjerk(u)
    osc = 0.5 * (1.0 - np.cos(2 * np.pi * reps * u))
    p = np.where(reps == 1, s, osc)[:, None]
    ang = (2 * np.pi * reps * u)[:, None]
    tri = (2 / np.pi) * np.arcsin(np.sin(np.pi * 2 * reps * u))[:, None]
    choices = [
        dv * s[:, None],                                               # hold: a slight push
        -dv * (0.5 * (1.0 + np.cos(2 * np.pi * reps * u)))[:, None],   # tap: contact at the location
        dv * p,                                                        # straight (back and forth if repeated)
        dv * p + pv * 0.35 * np.sin(np.pi * p),                        # arc
        dv * np.sin(ang) + pv * (1.0 - np.cos(ang)),                   # circle
        dv * u[:, None] + pv * 0.25 * tri,                             # zig-zag
    ]
    out = np.zeros((len(w), 3))
    for k, c in enumerate(choices):
        sel = path == k
        out[sel] = c[sel]
    return out * amp


def _hand_controls(t: dict[str, np.ndarray], w: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Handshape (F, 11) and wrist angles (F, 3) of the signing hand(s)."""
    reps, mod = t["reps"][w], t["mod"][w]
    g = np.where(reps == 1, _minjerk(u), 0.5 * (1.0 - np.cos(2 * np.pi * reps * u)))[:, None]
    hs = t["hs1"][w] + (t["hs2"][w] - t["hs1"][w]) * g
    palm = t["palm"][w].copy()
    wave = np.sin(2 * np.pi * reps * u)
    palm[:, 0] += np.where(mod == _MODIFIERS.index("twist"), 0.6 * wave, 0.0)
    palm[:, 1] += np.where(mod == _MODIFIERS.index("flex"), 0.5 * wave, 0.0)
    wig = mod == _MODIFIERS.index("wiggle")
    if wig.any():
        phase = 2 * np.pi * 2 * reps[wig, None] * u[wig, None] + np.arange(4)[None] * (np.pi / 2)
        hs[wig, 1:5] = np.clip(hs[wig, 1:5] + 0.35 * np.sin(phase) + 0.2, 0.0, 1.0)
    return hs, palm


def _controls(t: dict[str, np.ndarray], w: np.ndarray, u: np.ndarray, amp: np.ndarray, loc_offset: np.ndarray,
              question_pitch: np.ndarray) -> np.ndarray:
    """Per-frame controls (F, 36): right wrist (3, actual coordinates), left wrist (3),
    right hand shape (11) and wrist angles (3), left hand shape (11) and wrist angles (3),
    head pitch and yaw (2)."""
    hands = t["hands"][w]
    reps = t["reps"][w]
    d = _displacement(t, w, u) * amp[:, None]
    mirror = np.array([-1.0, 1.0, 1.0])
    is_base = hands == _HANDS.index("base")
    nd_u = np.where(hands == _HANDS.index("alt"), (u + 0.5 / reps) % 1.0, u)
    d_nd = np.where((hands == _HANDS.index("alt"))[:, None], _displacement(t, w, nd_u) * amp[:, None], d)
    loc = t["loc"][w] + loc_offset
    idle = np.asarray(LOCATIONS["idle"]) + loc_offset
    base = np.asarray(LOCATIONS["base"]) + loc_offset
    two = (hands == _HANDS.index("sym")) | (hands == _HANDS.index("alt"))
    left = np.where(two[:, None], loc + d_nd, np.where(is_base[:, None], base, idle))
    right = np.where(is_base[:, None], left + _BASE_OFFSET + d * mirror, (loc + d) * mirror)
    hs, palm = _hand_controls(t, w, u)
    hs_nd, palm_nd = _hand_controls(t, w, nd_u)
    relaxed = np.asarray(HANDSHAPES["relaxed"])
    rest_palm = np.asarray(PALMS["rest"])
    hs_l = np.where(two[:, None], hs_nd, np.where(is_base[:, None], t["nd_hs"][w], relaxed))
    palm_l = np.where(two[:, None], palm_nd, np.where(is_base[:, None], t["nd_palm"][w], rest_palm))
    mod = t["mod"][w]
    wave = np.sin(2 * np.pi * reps * u)
    pitch = np.where(mod == _MODIFIERS.index("nod"), 0.15 * wave, 0.0) + np.where(w == _REST_INDEX, 0.0, question_pitch)
    yaw = np.where(mod == _MODIFIERS.index("shake"), 0.2 * wave, 0.0)
    return np.concatenate([right, left, hs, palm, hs_l, palm_l, pitch[:, None], yaw[:, None]], axis=1)


_TRANSITION_SPEED = 1.5  # mean wrist speed (m/s) of a transition between signs


@lru_cache(maxsize=None)
def _transition_distances() -> np.ndarray:
    """(W, W): the larger of the two wrists' distances from the end of word a to the start of
    word b (canonical signer)."""
    t = _tables()
    w = np.arange(len(_WORDS))
    zero = np.zeros(len(w))
    start = _controls(t, w, zero, np.ones(len(w)), np.zeros(3), zero)[:, :6].reshape(-1, 2, 3)
    end = _controls(t, w, np.ones(len(w)), np.ones(len(w)), np.zeros(3), zero)[:, :6].reshape(-1, 2, 3)
    return np.linalg.norm(end[:, None] - start[None], axis=-1).max(-1)

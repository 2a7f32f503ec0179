"""The built-in corpus' sign lexicon: the signing space (locations, handshapes, palm
orientations, paths, directions), the 139 signs (:data:`VOCABULARY`) and their parameters as
per-word arrays (:func:`_tables`) for the vectorised synthesis. Also the corpus' data
:data:`VERSION` and frame rate :data:`FPS`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from typing import Any

import numpy as np


VERSION = 1  # bump whenever the generated data changes: old cache files are then ignored
FPS = 25.0

# --- the signing space ------------------------------------------------------------------------
# Wrist targets (metres) in the rest frame of the pelvis; x is *ipsilateral* (positive = towards
# the side of the hand that signs there), y up, z forward.
LOCATIONS: dict[str, tuple[float, float, float]] = {
    "forehead": (0.07, 0.60, 0.22), "temple": (0.15, 0.60, 0.16), "eye": (0.06, 0.56, 0.24),
    "nose": (0.05, 0.52, 0.25), "mouth": (0.05, 0.48, 0.25), "chin": (0.05, 0.44, 0.26),
    "cheek": (0.13, 0.50, 0.21), "ear": (0.19, 0.55, 0.12), "throat": (0.05, 0.38, 0.24),
    "chest": (0.06, 0.27, 0.24), "heart": (-0.03, 0.28, 0.23), "shoulder": (0.16, 0.35, 0.20),
    "cshoulder": (-0.08, 0.36, 0.21), "stomach": (0.06, 0.13, 0.26), "neutral": (0.10, 0.24, 0.38),
    "high": (0.10, 0.44, 0.36), "low": (0.12, 0.08, 0.34), "side": (0.30, 0.24, 0.24),
    "forward": (0.08, 0.30, 0.42), "base": (0.05, 0.20, 0.36),  # "base": the other hand's palm
    "rest": (0.13, 0.08, 0.25), "idle": (0.15, 0.12, 0.28),
}
_BASE_OFFSET = np.array([-0.03, 0.07, 0.02])  # dominant wrist above the base hand (actual coordinates)

# Handshapes: curl of the base joint of (thumb, index, middle, ring, pinky), curl of their
# distal joints (same order), spread; 0 = straight, 1 = fully bent.
HANDSHAPES: dict[str, tuple[float, ...]] = {
    "flat": (0.3, 0, 0, 0, 0, 0.1, 0, 0, 0, 0, 0.0),
    "open": (0.0, 0, 0, 0, 0, 0.0, 0, 0, 0, 0, 1.0),
    "fist": (0.6, 1, 1, 1, 1, 0.6, 1, 1, 1, 1, 0.0),
    "point": (0.7, 0, 1, 1, 1, 0.7, 0, 1, 1, 1, 0.0),
    "v": (0.7, 0, 0, 1, 1, 0.7, 0, 0, 1, 1, 1.0),
    "claw": (0.2, .15, .15, .15, .15, 0.6, .85, .85, .85, .85, 1.0),
    "thumb": (0.0, 1, 1, 1, 1, 0.0, 1, 1, 1, 1, 0.0),
    "y": (0.0, 1, 1, 1, 0, 0.0, 1, 1, 1, 0, 1.0),
    "l": (0.0, 0, 1, 1, 1, 0.0, 0, 1, 1, 1, 1.0),
    "c": (0.3, .35, .35, .35, .35, 0.3, .45, .45, .45, .45, 0.0),
    "o": (0.6, .6, .6, .6, .6, 0.6, .7, .7, .7, .7, 0.0),
    "bent": (0.3, .9, .9, .9, .9, 0.1, 0, 0, 0, 0, 0.0),
    "w": (0.7, 0, 0, 0, 1, 0.7, 0, 0, 0, 1, 1.0),
    "i": (0.7, 1, 1, 1, 0, 0.7, 1, 1, 1, 0, 0.0),
    "x": (0.7, .3, 1, 1, 1, 0.7, .9, 1, 1, 1, 0.0),
    "relaxed": (0.2, .25, .3, .35, .4, 0.1, .3, .3, .35, .4, 0.2),
}
# Wrist rotation presets (supination, flexion, deviation) in radians, relative to the forearm.
PALMS: dict[str, tuple[float, float, float]] = {
    "n": (0.0, 0.0, 0.0), "d": (-0.7, 0.0, 0.0), "u": (1.7, 0.0, 0.0), "i": (0.6, 0.2, 0.0),
    "f": (-1.0, -0.7, 0.0), "b": (1.0, 0.4, 0.0), "rest": (0.3, 0.2, 0.0),
}
_PATHS = ("hold", "tap", "straight", "arc", "circle", "zigzag")
_PATH_AMPLITUDE = {"hold": 0.015, "tap": 0.05, "straight": 0.14, "arc": 0.14, "circle": 0.05, "zigzag": 0.14}
_R = 0.7071
# direction name -> (movement direction, secondary direction for arcs/circles/zig-zags), ipsilateral
_DIRECTIONS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "up": ((0, 1, 0), (1, 0, 0)), "down": ((0, -1, 0), (1, 0, 0)), "fwd": ((0, 0, 1), (0, 1, 0)),
    "back": ((0, 0, -1), (0, 1, 0)), "out": ((1, 0, 0), (0, 1, 0)), "in": ((-1, 0, 0), (0, 1, 0)),
    "hz": ((1, 0, 0), (0, 0, 1)), "upfwd": ((0, _R, _R), (1, 0, 0)), "downfwd": ((0, -_R, _R), (1, 0, 0)),
    "outup": ((_R, _R, 0), (0, 0, 1)), "outdown": ((_R, -_R, 0), (0, 0, 1)), "inup": ((-_R, _R, 0), (0, 0, 1)),
}
_HANDS = ("one", "sym", "alt", "base")
_MODIFIERS = ("none", "twist", "flex", "wiggle", "nod", "shake")

# The lexicon: word hands location handshape palm path direction repetitions [key=value ...]
# (keys: to=end handshape, base=handshape:palm of the other hand, mod=modifier, amp=scale).
_LEXICON = """
# pronouns
i          one  chest     point  i  tap      back    1
you        one  forward   point  d  straight fwd     1
he         one  side      point  d  straight out     1
she        one  cheek     point  d  straight fwd     1
we         one  shoulder  point  i  arc      in      1
they       one  neutral   point  d  arc      out     1
# possessives
my         one  chest     flat   i  tap      back    1
your       one  forward   flat   f  straight fwd     1
our        one  shoulder  c      i  arc      in      1
# people
teacher    sym  temple    flat   i  straight fwd     2
student    sym  stomach   flat   i  straight down    1
friend     sym  neutral   x      n  hold     fwd     1  mod=twist
mother     one  chin      open   i  tap      back    2
father     one  forehead  open   i  tap      back    2
doctor     base base      claw   d  tap      in      2  base=flat:u
baby       sym  low       flat   u  arc      hz      2
man        one  forehead  flat   d  straight down    1
woman      one  chin      flat   d  straight down    1
child      one  low       flat   d  tap      down    2
family     sym  neutral   o      f  circle   hz      1
brother    one  forehead  l      d  straight down    1
sister     one  chin      l      d  straight down    1
# animals
dog        one  low       flat   i  tap      back    2
cat        sym  cheek     o      n  straight out     2
bird       one  mouth     l      f  hold     fwd     2  to=x
horse      one  temple    v      f  hold     fwd     2  mod=flex
fish       one  neutral   flat   i  zigzag   fwd     2
# places
library    one  neutral   l      n  circle   out     1
school     base base      flat   d  tap      down    2  base=flat:u
house      sym  high      flat   f  arc      outdown 1
store      sym  neutral   o      d  hold     fwd     2  mod=flex
hospital   one  cshoulder v      d  straight down    1
restaurant one  mouth     v      i  straight in      1
bathroom   one  neutral   fist   f  hold     fwd     2  mod=twist
church     base base      c      d  tap      down    2  base=fist:d
park       one  neutral   v      d  circle   hz      1
office     sym  neutral   flat   i  straight fwd     1
city       alt  high      flat   f  tap      in      2
# things
book       sym  neutral   flat   u  hold     fwd     1  mod=twist
car        alt  neutral   fist   n  straight up      2
computer   base base      c      d  circle   up      1  base=fist:d
phone      one  ear       y      i  hold     fwd     1
water      one  chin      w      i  tap      back    2
coffee     base base      fist   d  circle   hz      2  base=fist:i
food       one  mouth     o      b  tap      back    2
money      base base      o      d  tap      down    2  base=flat:u
door       sym  neutral   flat   f  arc      in      2
window     base base      flat   d  straight up      1  base=flat:d
ball       sym  neutral   claw   i  tap      in      2
music      base base      flat   d  arc      out     2  base=flat:u
movie      base base      open   n  hold     fwd     2  mod=wiggle base=open:d
game       sym  neutral   thumb  i  straight in      2
bread      base base      bent   d  straight down    2  base=flat:b
apple      one  cheek     x      d  hold     fwd     2  mod=twist
pizza      one  mouth     v      d  zigzag   down    1
milk       one  low       c      d  hold     fwd     2  to=fist
tea        base base      o      d  circle   up      2  base=c:i
shoes      sym  low       fist   d  tap      in      2
shirt      sym  shoulder  o      d  tap      back    2
table      sym  neutral   flat   d  tap      down    2
# verbs with an object
like       one  chest     open   f  straight fwd     1  to=o
want       sym  neutral   claw   u  straight back    1
need       one  neutral   x      d  hold     fwd     2  mod=flex
have       sym  chest     bent   b  tap      back    1
see        one  eye       v      i  straight fwd     1
eat        one  mouth     o      i  tap      back    1
drink      one  mouth     c      i  arc      up      1
read       base base      v      d  straight down    2  base=flat:f
buy        base base      o      d  straight fwd     1  base=flat:u
love       sym  heart     fist   b  hold     fwd     1
help       base base      thumb  i  straight up      1  base=flat:u
know       one  forehead  bent   i  tap      back    2
make       sym  neutral   fist   d  hold     fwd     2  mod=twist
play       sym  neutral   y      i  hold     fwd     2  mod=twist
find       one  neutral   open   d  straight up      1  to=x
drive      sym  forward   fist   i  straight fwd     1
cook       base base      flat   d  hold     fwd     2  mod=twist base=flat:u
write      base base      o      d  zigzag   out     1  base=flat:u
learn      base base      claw   d  straight up      1  to=o base=flat:u amp=2.2
# verbs without an object
go         sym  neutral   point  d  arc      fwd     1
come       sym  forward   point  u  arc      back    1
sleep      one  eye       open   b  straight down    1  to=o
work       base base      fist   d  tap      down    2  base=fist:d
run        sym  neutral   l      f  straight fwd     1
walk       alt  low       flat   d  straight up      2
sit        base base      x      d  tap      down    1  base=v:d
swim       sym  neutral   flat   d  arc      out     2
dance      base base      v      d  zigzag   out     2  base=flat:u
sing       base base      flat   i  arc      up      2  base=flat:u
study      base base      open   d  straight up      2  mod=wiggle base=flat:u
wait       sym  side      open   u  hold     fwd     2  mod=wiggle
cry        alt  eye       point  b  straight down    2
laugh      sym  cheek     l      i  straight up      2
# adjectives
happy      sym  chest     flat   b  straight up      2
sad        sym  eye       open   b  straight down    1
tired      sym  chest     bent   b  arc      down    1
hungry     one  throat    c      b  straight down    1
big        sym  neutral   l      d  straight out     1
small      sym  neutral   flat   i  straight in      1
good       one  mouth     flat   i  straight downfwd 1
bad        one  chin      flat   f  arc      downfwd 1
new        base base      bent   u  arc      in      1  base=flat:u
old        one  chin      c      i  straight down    1  to=fist
hot        one  mouth     claw   b  straight fwd     1  mod=twist
cold       sym  chest     fist   i  hold     fwd     2  mod=twist
beautiful  one  chin      open   b  circle   out     1  to=o
fast       sym  neutral   l      d  straight back    1  to=x
slow       base base      flat   d  straight in      1  base=flat:d
sick       one  stomach   claw   i  tap      back    2
angry      sym  chest     claw   b  straight up      1
busy       base base      fist   d  straight out     2  base=fist:d
nice       base base      flat   d  straight fwd     1  base=flat:u
easy       base base      bent   u  straight up      2  base=bent:u
hard       base base      x      d  tap      down    1  base=x:d
red        one  chin      point  i  straight down    2
blue       one  neutral   flat   i  hold     fwd     2  mod=twist
green      one  neutral   l      i  hold     fwd     2  mod=twist
# question words
where      one  neutral   point  f  straight out     3
what       sym  neutral   open   u  straight out     2
who        one  mouth     point  i  circle   fwd     2
when       base base      point  d  circle   hz      1  base=point:d
why        one  forehead  flat   b  straight fwd     1  to=y
how        sym  chest     bent   d  hold     fwd     1  mod=twist
# time
today      sym  neutral   y      u  straight down    2
tomorrow   one  cheek     thumb  i  arc      fwd     1
yesterday  one  cheek     thumb  i  arc      back    1
now        sym  neutral   bent   u  straight down    1
morning    base base      flat   b  arc      up      1  base=flat:d
night      base base      bent   d  arc      down    1  base=flat:d
# others
yes        one  neutral   fist   d  hold     fwd     2  mod=nod
no         one  neutral   v      d  hold     fwd     1  to=o mod=shake
please     one  chest     flat   b  circle   out     1
thank_you  one  chin      flat   b  straight fwd     1
hello      one  temple    flat   f  straight out     1
sorry      one  chest     fist   b  circle   up      2
not        one  chin      thumb  i  straight fwd     1  mod=shake
finish     sym  neutral   open   b  hold     fwd     1  mod=twist
can        sym  neutral   fist   d  straight down    2
will       one  cheek     flat   i  arc      fwd     1
"""


@dataclass(frozen=True)
class Sign:
    """One sign of the lexicon (see the docstring of :mod:`sald_fast.data.builtin`); ``word`` is its English word
    (``thank_you`` is "thank you"), ``category`` its lexicon section."""

    word: str
    category: str
    hands: str
    location: str
    handshape: str
    palm: str
    path: str
    direction: str
    repetitions: int
    end_handshape: str
    base_handshape: str
    base_palm: str
    modifier: str = "none"
    amplitude: float = 1.0


def _parse_lexicon(text: str) -> dict[str, Sign]:
    signs: dict[str, Sign] = {}
    category = ""
    for line in text.strip().splitlines():
        if line.startswith("#"):
            category = line[1:].strip()
            continue
        tok = line.split()
        word, hands, loc, hs, palm, path, direction, reps = tok[:8]
        kv = dict(t.split("=", 1) for t in tok[8:])
        base_hs, base_palm = kv.get("base", "relaxed:rest").split(":")
        sign = Sign(word=word, category=category, hands=hands, location=loc, handshape=hs, palm=palm, path=path,
                    direction=direction, repetitions=int(reps), end_handshape=kv.get("to", hs),
                    base_handshape=base_hs, base_palm=base_palm, modifier=kv.get("mod", "none"),
                    amplitude=float(kv.get("amp", 1.0)))
        for value, table, what in ((hands, _HANDS, "hands"), (loc, LOCATIONS, "location"),
                                   (hs, HANDSHAPES, "handshape"),
                                   (palm, PALMS, "palm"), (path, _PATHS, "path"), (direction, _DIRECTIONS, "direction"),
                                   (sign.end_handshape, HANDSHAPES, "handshape"), (base_hs, HANDSHAPES, "handshape"),
                                   (base_palm, PALMS, "palm"), (sign.modifier, _MODIFIERS, "modifier")):
            if value not in table:
                raise ValueError(f"lexicon entry {word!r}: unknown {what} {value!r}")
        if (hands == "base") != (loc == "base"):
            raise ValueError(f"lexicon entry {word!r}: hands 'base' and location 'base' go together")
        if word in signs:
            raise ValueError(f"lexicon entry {word!r} is duplicated")
        signs[word] = sign
    return signs


VOCABULARY: Mapping[str, Sign] = MappingProxyType(_parse_lexicon(_LEXICON))  # read-only
_REST = Sign(word="<rest>", category="rest", hands="sym", location="rest", handshape="relaxed", palm="rest",
             path="hold", direction="fwd", repetitions=1, end_handshape="relaxed", base_handshape="relaxed",
             base_palm="rest", amplitude=0.0)
_WORDS = tuple(VOCABULARY) + ("<rest>",)
_WORD_INDEX = {w: i for i, w in enumerate(_WORDS)}
_REST_INDEX = len(VOCABULARY)


def _sign_duration(sign: Sign) -> float:
    """Frames of a sign at speed 1 (25 fps)."""
    if sign.path == "circle":
        return 9.0 + 5.0 * sign.repetitions
    if sign.path == "hold" and sign.modifier == "none" and sign.end_handshape == sign.handshape:
        return 9.0
    return 6.0 + 4.0 * sign.repetitions


@lru_cache(maxsize=None)
def _tables() -> dict[str, np.ndarray]:
    """Per-word parameter arrays (vocabulary + rest), indexed by :data:`_WORD_INDEX`."""
    signs = [VOCABULARY[w] for w in _WORDS[:-1]] + [_REST]
    t: dict[str, Any] = {
        "hands": np.array([_HANDS.index(s.hands) for s in signs]),
        "loc": np.array([LOCATIONS[s.location] for s in signs]),
        "path": np.array([_PATHS.index(s.path) for s in signs]),
        "dir": np.array([_DIRECTIONS[s.direction][0] for s in signs], dtype=np.float64),
        "perp": np.array([_DIRECTIONS[s.direction][1] for s in signs], dtype=np.float64),
        "amp": np.array([_PATH_AMPLITUDE[s.path] * s.amplitude for s in signs]),
        "reps": np.array([s.repetitions for s in signs], dtype=np.float64),
        "mod": np.array([_MODIFIERS.index(s.modifier) for s in signs]),
        "hs1": np.array([HANDSHAPES[s.handshape] for s in signs], dtype=np.float64),
        "hs2": np.array([HANDSHAPES[s.end_handshape] for s in signs], dtype=np.float64),
        "palm": np.array([PALMS[s.palm] for s in signs], dtype=np.float64),
        "nd_hs": np.array([HANDSHAPES[s.base_handshape] for s in signs], dtype=np.float64),
        "nd_palm": np.array([PALMS[s.base_palm] for s in signs], dtype=np.float64),
        "dur": np.array([_sign_duration(s) for s in signs]),
    }
    t["dir"] /= np.linalg.norm(t["dir"], axis=1, keepdims=True)
    t["perp"] /= np.linalg.norm(t["perp"], axis=1, keepdims=True)
    return t

"""The built-in procedural signing corpus: English sentences and synthetic upper-body signing.

Nothing is downloaded: a small invented sign lexicon (:data:`VOCABULARY`, 139 signs, loosely
inspired by ASL but not ASL) and a small English grammar generate a parallel corpus in the clip
format of :mod:`sald_fast.data` (SMPL-X axis-angle parameters at 25 fps).

Signs. Each sign is a parametric motion of the 44-joint skeleton: where the dominant (right)
hand is (a wrist target near a body landmark: forehead, chin, chest, shoulder, neutral space,
...), how it moves from there (hold, tap, straight, arc, circle, zig-zag; 1-3 repetitions),
the handshape (curl of each finger's base and distal joints plus spread: flat, fist, point, V,
claw, thumb-up, ...; optionally changing during the sign), the palm orientation (wrist
rotation), an optional hand modifier (wrist twist, wrist flex, finger wiggle) or head movement
(nod, shake), and what the other hand does: rest (one-handed), mirror the dominant hand
(symmetric), mirror it half a cycle late (alternating), or hold a base handshape that the
dominant hand acts on (asymmetric).

Sentences. Templates ("the dog is happy", "where is the library?", "i like my new teacher",
"do you like coffee?", ...) map English to a gloss order (topic first, wh-word last, time
first); yes/no questions tilt the head forward during the signs. A sentence becomes motion
through per-frame controls (hand positions, handshapes, wrist angles, head angles): a rest
pose, then each sign, with minimum-jerk transitions between consecutive signs
(co-articulation), then the rest pose again. Each sentence gets its own signer variation:
speed, amplitude, a shift of the signing space, elbow swivel, smooth noise and body sway. Arm
joint rotations come from an analytic two-bone IK with a swivel angle.

Splits hold out sentences: no sentence is in two splits, and every sign appears in train.
Generation is vectorised numpy (a few seconds for the default 3000/200/200 sentences) and the
result is cached on disk as a versioned ``.npz`` (arrays only) under ``$SALD_FAST_CACHE`` or
``~/.cache/sald_fast``.

:func:`alternate_renditions` signs given clips' sentences again with another signer variation
(what a perfect model could produce; the evaluation's "Another signing, same sentence" row).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from sald_fast.skeleton import SIGNING_SKELETON

from .dataset import aa_to_quat, matrix_to_quat, quat_mul, quat_to_aa, resample_clip

__all__ = [
    "VERSION",
    "FPS",
    "Sign",
    "VOCABULARY",
    "LOCATIONS",
    "HANDSHAPES",
    "sentence_pool",
    "sentence_to_glosses",
    "synthesize",
    "alternate_renditions",
    "builtin_corpus",
    "default_cache_dir",
]

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
    """One sign of the lexicon (see the module docstring); ``word`` is its English word
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


# --- grammar ------------------------------------------------------------------------------------

_PRONOUNS = (("i", "am", "do", False), ("you", "are", "do", False), ("he", "is", "does", True),
             ("she", "is", "does", True), ("we", "are", "do", False), ("they", "are", "do", False))
_POSSESSIVES = ("my", "your", "our")
_PEOPLE = ("teacher", "student", "friend", "mother", "father", "doctor", "baby", "man", "woman", "child",
           "family", "brother", "sister")
_ANIMALS = ("dog", "cat", "bird", "horse", "fish")
_PLACES = ("library", "school", "house", "store", "hospital", "restaurant", "bathroom", "church", "park", "office",
           "city")
_THINGS = ("book", "car", "computer", "phone", "ball", "movie", "game", "table", "shoes", "shirt", "door", "window")
_MASS = ("food", "bread", "apple", "pizza", "water", "coffee", "milk", "tea", "money", "music")
_FOOD = ("food", "bread", "apple", "pizza")
_DRINKS = ("water", "coffee", "milk", "tea")
_ADJ_ANIMATE = ("happy", "sad", "tired", "hungry", "big", "small", "good", "bad", "new", "old", "beautiful", "fast",
                "slow", "sick", "angry", "busy", "nice")
_ADJ_THING = ("big", "small", "new", "old", "good", "bad", "hot", "cold", "red", "blue", "green", "beautiful", "nice",
              "easy", "hard")
_VERB_FORMS = {  # base: (3rd person singular, past)
    "like": ("likes", "liked"), "want": ("wants", "wanted"), "need": ("needs", "needed"), "have": ("has", "had"),
    "see": ("sees", "saw"), "eat": ("eats", "ate"), "drink": ("drinks", "drank"), "read": ("reads", "read"),
    "buy": ("buys", "bought"), "love": ("loves", "loved"), "help": ("helps", "helped"), "know": ("knows", "knew"),
    "make": ("makes", "made"), "play": ("plays", "played"), "find": ("finds", "found"), "drive": ("drives", "drove"),
    "cook": ("cooks", "cooked"), "write": ("writes", "wrote"), "learn": ("learns", "learned"),
    "go": ("goes", "went"), "come": ("comes", "came"), "sleep": ("sleeps", "slept"), "work": ("works", "worked"),
    "run": ("runs", "ran"), "walk": ("walks", "walked"), "sit": ("sits", "sat"), "swim": ("swims", "swam"),
    "dance": ("dances", "danced"), "sing": ("sings", "sang"), "study": ("studies", "studied"),
    "wait": ("waits", "waited"), "cry": ("cries", "cried"), "laugh": ("laughs", "laughed"),
}
_VERBS_ANY = ("like", "want", "need", "have", "see", "buy", "find")
_VERBS_OBJECTS = {"eat": _FOOD, "drink": _DRINKS, "cook": _FOOD, "read": ("book",), "write": ("book",),
                  "drive": ("car",), "play": ("game", "music", "ball"), "make": ("food", "table"), "learn": ("music",)}
_VERBS_PERSON = ("love", "help", "know", "see", "like", "find")
_VERBS_INTRANSITIVE = ("go", "come", "sleep", "work", "run", "walk", "sit", "swim", "dance", "sing", "study", "wait",
                       "cry", "laugh")
_FIXED = (("hello", ["hello"]), ("thank you", ["thank_you"]), ("yes", ["yes"]), ("no", ["no"]),
          ("please", ["please"]), ("sorry", ["sorry"]), ("hello my friend", ["hello", "my", "friend"]),
          ("please help me", ["please", "help", "i"]), ("i am sorry", ["i", "sorry"]),
          ("no, thank you", ["no", "thank_you"]), ("yes, please", ["yes", "please"]),
          ("good morning", ["good", "morning"]), ("good night", ["good", "night"]),
          ("see you tomorrow", ["see", "you", "tomorrow"]), ("thank you, my friend", ["thank_you", "my", "friend"]),
          ("i finish now", ["now", "i", "finish"]), ("we finish today", ["today", "we", "finish"]))
# sentence kinds (head posture): statement, wh-question, yes/no question
_STATEMENT, _WH, _YES_NO = 0, 1, 2


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _obj(word: str) -> str:
    """English noun phrase of an object: mass nouns bare, count nouns with 'the'."""
    return word if word in _MASS else f"the {word}"


def _verb(base: str, third: bool) -> str:
    return _VERB_FORMS[base][0] if third else base


def _templates() -> list[tuple[str, float, list[tuple[str, list[str], int]]]]:
    """(template name, weight, [(text, glosses, kind)]) for every sentence template."""
    objects = {v: _THINGS + _MASS for v in _VERBS_ANY} | dict(_VERBS_OBJECTS)
    T: list[tuple[str, float, list[tuple[str, list[str], int]]]] = []
    T.append(("noun is adjective", 2.0,
              [(f"the {n} is {a}", [n, a], _STATEMENT) for n in _PEOPLE + _ANIMALS for a in _ADJ_ANIMATE]
              + [(f"the {n} is {a}", [n, a], _STATEMENT) for n in _THINGS for a in _ADJ_THING]))
    T.append(("pronoun is adjective", 1.0,
              [(f"{p} {be} {a}", [p, a], _STATEMENT) for p, be, _, _ in _PRONOUNS for a in _ADJ_ANIMATE]))
    T.append(("where", 1.0,
              [(f"where is the {n}?", [n, "where"], _WH) for n in _PLACES + _THINGS]
              + [(f"where is {q} {n}?", [q, n, "where"], _WH) for q in _POSSESSIVES for n in _PEOPLE + _THINGS]))
    T.append(("subject verb object", 1.5,
              [(f"{p} {_verb(v, third)} {_obj(o)}", [o, p, v], _STATEMENT)
               for p, _, _, third in _PRONOUNS for v, objs in objects.items() for o in objs]))
    T.append(("subject verb person", 0.5,
              [(f"{p} {_verb(v, third)} {q} {n}", [q, n, p, v], _STATEMENT)
               for p, _, _, third in _PRONOUNS for v in _VERBS_PERSON for q in _POSSESSIVES for n in _PEOPLE]))
    T.append(("i verb my adjective person", 0.4,
              [(f"i {v} {q} {a} {n}", [q, a, n, v], _STATEMENT) for v in _VERBS_PERSON for q in _POSSESSIVES
               for a in ("new", "old", "happy", "sick", "nice", "tired") for n in _PEOPLE]))
    time_rows = []
    for p, _, _, third in _PRONOUNS:
        for v in _VERBS_INTRANSITIVE:
            form, past = _verb(v, third), _VERB_FORMS[v][1]
            time_rows += [(f"{p} {form} today", ["today", p, v], _STATEMENT),
                          (f"{p} {form} now", ["now", p, v], _STATEMENT),
                          (f"{p} {form} in the morning", ["morning", p, v], _STATEMENT),
                          (f"{p} {form} at night", ["night", p, v], _STATEMENT),
                          (f"{p} will {v} tomorrow", ["tomorrow", p, v], _STATEMENT),
                          (f"{p} {past} yesterday", ["yesterday", p, v], _STATEMENT)]
    T.append(("time subject verb", 1.0, time_rows))
    wh = []
    for n in _PEOPLE:
        for v in _VERBS_ANY:
            wh.append((f"what does the {n} {v}?", [n, v, "what"], _WH))
        for v in _VERBS_INTRANSITIVE:
            wh.append((f"when does the {n} {v}?", [n, v, "when"], _WH))
            wh.append((f"where does the {n} {v}?", [n, v, "where"], _WH))
        for q in _POSSESSIVES:
            wh.append((f"how is {q} {n}?", [q, n, "how"], _WH))
    for n in _PEOPLE + _ANIMALS:
        for a in _ADJ_ANIMATE:
            wh.append((f"why is the {n} {a}?", [n, a, "why"], _WH))
    for a in _ADJ_ANIMATE:
        wh.append((f"who is {a}?", [a, "who"], _WH))
    for v in _VERBS_INTRANSITIVE:
        wh.append((f"who can {v}?", [v, "can", "who"], _WH))
    T.append(("wh-question", 1.2, wh))
    yn = [(f"do you {v} {_obj(o)}?", [o, "you", v], _YES_NO) for v, objs in objects.items() for o in objs]
    yn += [(f"is the {n} {a}?", [n, a], _YES_NO) for n in _PEOPLE + _ANIMALS for a in _ADJ_ANIMATE]
    yn += [(f"can you {v}?", ["you", v, "can"], _YES_NO) for v in _VERBS_INTRANSITIVE]
    T.append(("yes/no question", 1.0, yn))
    T.append(("negation", 0.4,
              [(f"{p} {do} not {v} {_obj(o)}", [o, p, v, "not"], _STATEMENT)
               for p, _, do, _ in _PRONOUNS for v in _VERBS_ANY for o in _THINGS + _MASS]))
    T.append(("can / will", 0.6,
              [(f"{p} {aux} {v}", [p, v, aux], _STATEMENT) for p, _, _, _ in _PRONOUNS for aux in ("can", "will")
               for v in _VERBS_INTRANSITIVE]))
    T.append(("go to place", 0.8,
              [(f"{p} {_verb('go', third)} to the {n}", [n, p, "go"], _STATEMENT)
               for p, _, _, third in _PRONOUNS for n in _PLACES]
              + [(f"{p} went to the {n} yesterday", ["yesterday", n, p, "go"], _STATEMENT)
                 for p, _, _, _ in _PRONOUNS for n in _PLACES]
              + [(f"{p} {_verb('come', third)} to the {n}", [n, p, "come"], _STATEMENT)
                 for p, _, _, third in _PRONOUNS for n in _PLACES]))
    T.append(("person has thing", 0.4,
              [(f"the {n} has {_article(a)} {a} {t}", [n, "have", t, a], _STATEMENT)
               for n in _PEOPLE for t in _THINGS for a in _ADJ_THING]))
    T.append(("fixed phrases", 0.4, [(t, g, _STATEMENT) for t, g in _FIXED]))
    return T


def normalize_text(text: str) -> str:
    """Lower-case, single spaces, no surrounding space."""
    return re.sub(r"\s+", " ", text.strip().lower())


@lru_cache(maxsize=None)
def sentence_pool() -> tuple[tuple[str, tuple[str, ...], int, float], ...]:
    """Every sentence the grammar makes: (text, glosses, kind, sampling weight), texts unique.

    A template's weight is shared by its sentences, so small templates are not drowned out.
    Kinds: 0 statement, 1 wh-question, 2 yes/no question.
    """
    seen: dict[str, tuple[str, tuple[str, ...], int, float]] = {}
    for name, weight, rows in _templates():
        for text, glosses, kind in rows:
            for g in glosses:
                if g not in VOCABULARY:
                    raise AssertionError(f"template {name!r}: gloss {g!r} is not in the vocabulary")
            if text not in seen:
                seen[text] = (text, tuple(glosses), kind, weight / len(rows))
    return tuple(seen.values())


@lru_cache(maxsize=None)
def _pool_index() -> dict[str, int]:
    return {row[0]: i for i, row in enumerate(sentence_pool())}


def sentence_to_glosses(text: str) -> list[str]:
    """The sign sequence (lexicon words, in signing order) of a grammar sentence, e.g.
    ``"where is the library?" -> ["library", "where"]``. Raises KeyError for a sentence the
    grammar does not make."""
    i = _pool_index().get(normalize_text(text))
    if i is None:
        raise KeyError(f"{text!r} is not a sentence of the built-in grammar")
    return list(sentence_pool()[i][1])


# --- motion synthesis ---------------------------------------------------------------------------

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


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


_SK = SIGNING_SKELETON
_L1 = float(np.linalg.norm(_SK.offsets[_SK.index("left_elbow")]))
_L2 = float(np.linalg.norm(_SK.offsets[_SK.index("left_wrist")]))
_REST_POS = _SK.rest_positions()
_LEFT_SHOULDER = _REST_POS[_SK.index("left_shoulder")]
_ELBOW_HINT = _normalize(np.array([0.45, -0.75, -0.35]))  # elbows out, down and back
_REST_FRAME = np.stack([np.array([1.0, 0, 0]), np.array([0, -1.0, 0]), np.array([0, 0, -1.0])], axis=-1)
_THUMB_DIR = _normalize(np.asarray(_SK.offsets[_SK.index("left_thumb1")], dtype=np.float64))
_THUMB_AXIS = _normalize(np.cross(_THUMB_DIR, _normalize(np.array([0.1, -0.7, -0.7]))))


def _two_bone_ik(target: np.ndarray, swivel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left-arm IK. ``target`` (F, 3): wrist position relative to the shoulder, in the collar's
    frame; ``swivel`` (F,) radians about the shoulder-wrist axis. Returns the local rotation
    matrices (F, 3, 3) of the shoulder and the elbow (a hinge about the rest frame's -y)."""
    dist = np.linalg.norm(target, axis=-1, keepdims=True)
    n = target / np.maximum(dist, 1e-9)
    dist = np.clip(dist, 0.12, 0.96 * (_L1 + _L2))
    a = (_L1 ** 2 - _L2 ** 2 + dist ** 2) / (2 * dist)
    r = np.sqrt(np.maximum(_L1 ** 2 - a ** 2, 1e-8))
    u0 = _normalize(_ELBOW_HINT - (n @ _ELBOW_HINT)[:, None] * n)
    v0 = np.cross(n, u0)
    u = np.cos(swivel)[:, None] * u0 + np.sin(swivel)[:, None] * v0
    elbow = a * n + r * u
    b1 = elbow / _L1
    fore = _normalize(dist * n - elbow)
    hinge = _normalize(np.cross(b1, fore))
    upper = np.stack([b1, hinge, np.cross(b1, hinge)], axis=-1)   # columns
    lower = np.stack([fore, hinge, np.cross(fore, hinge)], axis=-1)
    shoulder = upper @ _REST_FRAME.T
    elbow_rot = _REST_FRAME @ np.swapaxes(upper, -1, -2) @ lower @ _REST_FRAME.T
    return shoulder, elbow_rot


def _axis_rot(axis: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Quaternions (F, 4) of rotations by ``angle`` (F,) about the unit ``axis`` (3,)."""
    return aa_to_quat(angle[:, None] * np.asarray(axis, dtype=np.float64)[None])


def _hand_pose(hs: np.ndarray, palm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Left-hand canonical wrist axis-angle (F, 3) and finger axis-angles (F, 15, 3) in SMPL-X
    order (index, middle, pinky, ring, thumb; three joints each)."""
    F = hs.shape[0]
    ex, ey, ez = np.eye(3)
    wrist = quat_mul(quat_mul(_axis_rot(ex, -palm[:, 0]), _axis_rot(ez, -palm[:, 1])), _axis_rot(ey, -palm[:, 2]))
    fingers = np.zeros((F, 15, 3))
    spread = hs[:, 10] * 0.22
    # SMPL-X order index, middle, pinky, ring, thumb; our handshape order thumb, index, middle, ring, pinky
    for slot, (k, spread_sign) in enumerate(((1, -1.0), (2, 0.0), (4, 1.3), (3, 0.6))):
        base = quat_mul(_axis_rot(ey, spread_sign * spread), _axis_rot(ez, -1.45 * hs[:, k]))
        fingers[:, 3 * slot] = quat_to_aa(base)
        fingers[:, 3 * slot + 1] = -1.6 * hs[:, 5 + k, None] * ez
        fingers[:, 3 * slot + 2] = -1.1 * hs[:, 5 + k, None] * ez
    fingers[:, 12] = 1.0 * hs[:, 0, None] * _THUMB_AXIS
    fingers[:, 13] = 0.8 * hs[:, 5, None] * _THUMB_AXIS
    fingers[:, 14] = 0.8 * hs[:, 5, None] * _THUMB_AXIS
    return quat_to_aa(wrist), fingers


def _mirror_aa(aa: np.ndarray) -> np.ndarray:
    """Axis-angle of the left/right mirror image (reflection x -> -x): (x, -y, -z)."""
    return aa * np.array([1.0, -1.0, -1.0])


def _arm_pose(wrist_target: np.ndarray, swivel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shoulder and elbow axis-angles (F, 3) of the left arm for wrist targets in the pelvis rest
    frame (actual coordinates, left side)."""
    rel = wrist_target - _LEFT_SHOULDER  # collar and spine rotations move the whole frame with them
    sh, el = _two_bone_ik(rel, swivel)
    return quat_to_aa(matrix_to_quat(sh)), quat_to_aa(matrix_to_quat(el))


def _joint_slots() -> dict[str, int]:
    """Joint name -> row in a (52, 3) frame [global_orient, body_pose 21, left hand 15, right hand 15]."""
    return {name: idx if idx < 22 else idx - 3 for name, idx in zip(_SK.names, _SK.smplx_indices)}


_SLOTS = _joint_slots()


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


# --- splits, corpus, cache ------------------------------------------------------------------------

def _choose_splits(rng: np.random.Generator, sizes: dict[str, int]) -> dict[str, list[int]]:
    """Pool indices per split: disjoint, a weighted random order, every sign covered by train."""
    pool = sentence_pool()
    weights = np.array([row[3] for row in pool])
    keys = np.log(rng.uniform(size=len(pool))) / weights  # Efraimidis-Spirakis weighted order
    order = np.argsort(-keys, kind="stable")
    total = sum(sizes.values())
    if total > len(pool):
        raise ValueError(f"the grammar makes {len(pool)} sentences; {total} were asked for ({sizes})")
    cover: list[int] = []
    covered: set[str] = set()
    if sizes["train"] > 0:
        for i in order:
            new = set(pool[i][1]) - covered
            if new:
                cover.append(int(i))
                covered |= new
            if len(covered) == len(VOCABULARY):
                break
    if len(cover) > sizes["train"]:
        cover = []  # too small a train split to cover the vocabulary: plain random order
    in_cover = set(cover)
    rest = [int(i) for i in order if int(i) not in in_cover]
    out: dict[str, list[int]] = {}
    train_rest = sizes["train"] - len(cover)
    out["train"] = cover + rest[:train_rest]
    pos = train_rest
    for split in ("val", "test"):
        out[split] = rest[pos:pos + sizes[split]]
        pos += sizes[split]
    return out


def default_cache_dir() -> Path:
    """``$SALD_FAST_CACHE`` or ``~/.cache/sald_fast``."""
    env = os.environ.get("SALD_FAST_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "sald_fast"


def _generate(seed: int, sizes: dict[str, int], variation: float) -> dict[str, dict[str, np.ndarray]]:
    """Arrays per split: poses (F, 52, 3), transl (F, 3), offsets (n + 1,), texts, names, glosses."""
    rng = np.random.default_rng([seed, VERSION])
    chosen = _choose_splits(rng, sizes)
    pool = sentence_pool()
    out: dict[str, dict[str, np.ndarray]] = {}
    for split in ("train", "val", "test"):
        idx = chosen[split]
        rows = [pool[i] for i in idx]
        split_rng = np.random.default_rng([seed, VERSION, ("train", "val", "test").index(split) + 1])
        var = _draw_variation(split_rng, len(rows), max((len(r[1]) for r in rows), default=1), variation)
        poses, transl, offsets = [], [], [np.zeros(1, dtype=np.int64)]
        chunk = 256
        for c0 in range(0, len(rows), chunk):
            sel = slice(c0, c0 + chunk)
            sub = _Variation(**{f: getattr(var, f)[sel] for f in var.__dataclass_fields__})
            p, tr, st = _synthesize_batch([(r[1], r[2]) for r in rows[sel]], sub)
            poses.append(p), transl.append(tr), offsets.append(st[1:] + offsets[-1][-1])
        out[split] = {
            "poses": np.concatenate(poses) if poses else np.zeros((0, 52, 3), np.float32),
            "transl": np.concatenate(transl) if transl else np.zeros((0, 3), np.float32),
            "offsets": np.concatenate(offsets).astype(np.int64),
            "texts": np.array([r[0] for r in rows], dtype=str),
            "glosses": np.array([" ".join(r[1]) for r in rows], dtype=str),
            "names": np.array([f"builtin_{split}_{i:05d}" for i in range(len(rows))], dtype=str),
        }
    return out


def _split_clips(arrays: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    off = arrays["offsets"]
    return [_clip(arrays["poses"][off[i]:off[i + 1]], arrays["transl"][off[i]:off[i + 1]], str(arrays["texts"][i]),
                  str(arrays["names"][i]), str(arrays["glosses"][i]).split()) for i in range(len(off) - 1)]


@lru_cache(maxsize=None)
def _source_digest() -> str:
    """Hash of this module's source and the skeleton: any change to the generator or the
    lexicon invalidates cached corpora even without a :data:`VERSION` bump."""
    h = hashlib.sha1(Path(__file__).read_bytes())
    h.update(np.ascontiguousarray(SIGNING_SKELETON.offsets).tobytes())
    return h.hexdigest()[:16]


def _load_cache(path: Path, meta_json: str, splits: Sequence[str]) -> dict[str, dict[str, np.ndarray]] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["meta"]) != meta_json:
                return None
            return {s: {k: z[f"{s}/{k}"] for k in ("poses", "transl", "offsets", "texts", "glosses", "names")}
                    for s in splits}
    except Exception as e:  # unreadable or partial file: regenerate
        warnings.warn(f"ignoring unreadable built-in corpus cache {path}: {e}", stacklevel=3)
        return None


_CACHE_KEEP = 4  # built-in corpus files kept per cache folder (newest first)


def _save_cache(path: Path, meta_json: str, data: dict[str, dict[str, np.ndarray]]) -> None:
    arrays = {f"{s}/{k}": v for s, d in data.items() for k, v in d.items()}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, meta=np.array(meta_json), **arrays)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        # keep the newest few corpora: each default-sized one is ~150 MB
        old = sorted(path.parent.glob("builtin_v*_*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
        for stale in old[_CACHE_KEEP:]:
            stale.unlink(missing_ok=True)
    except OSError as e:
        warnings.warn(f"could not write the built-in corpus cache {path}: {e}", stacklevel=3)


def builtin_corpus(seed: int = 0, num_train: int = 3000, num_val: int = 200, num_test: int = 200,
                   variation: float = 1.0, cache: bool = True, cache_dir: str | os.PathLike | None = None,
                   splits: Sequence[str] = ("train", "val", "test")) -> dict[str, list[dict[str, Any]]]:
    """The built-in corpus: ``{"train": [clip], "val": [...], "test": [...]}``.

    Deterministic for (``seed``, sizes, ``variation``, :data:`VERSION`). Clips are in the format
    of :mod:`sald_fast.data` (plus ``glosses``, the signs as a space-separated string); each split
    holds distinct sentences, no sentence is in two splits, and every sign of the vocabulary
    occurs in train (when train is large enough to cover it). With ``cache``, the result is
    stored in (and reloaded from) a file ``builtin_v<VERSION>_<hash of the parameters>.npz`` in
    ``cache_dir`` (default :func:`default_cache_dir`), written atomically (arrays only, loaded
    with ``allow_pickle=False``); a file whose recorded parameters differ is regenerated; only
    the 4 newest corpus files of a folder are kept.
    ``splits`` selects the splits returned (all are generated and cached).
    """
    sizes = {"train": int(num_train), "val": int(num_val), "test": int(num_test)}
    splits = tuple(splits)
    for s in splits:
        if s not in sizes:
            raise ValueError(f"splits must be among ('train', 'val', 'test'), got {s!r}")
    for k, v in sizes.items():
        if v < 0:
            raise ValueError(f"num_{k} must be >= 0, got {v}")
    meta = {"version": VERSION, "seed": int(seed), "sizes": sizes, "variation": float(variation),
            "source": _source_digest()}
    meta_json = json.dumps(meta, sort_keys=True)
    path = None
    data = None
    if cache:
        digest = hashlib.sha1(meta_json.encode()).hexdigest()[:12]
        path = Path(cache_dir if cache_dir is not None else default_cache_dir()) / f"builtin_v{VERSION}_{digest}.npz"
        if path.exists():
            data = _load_cache(path, meta_json, splits)
    if data is None:
        data = _generate(int(seed), sizes, float(variation))
        if path is not None:
            _save_cache(path, meta_json, data)
    return {split: _split_clips(data[split]) for split in splits}

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

Files: :mod:`.lexicon` (signing space and signs), :mod:`.grammar` (English sentences and their
gloss orders), :mod:`.controls` (per-frame hand/head controls of signs), :mod:`.arm_hand` (IK
and hand poses to joint rotations), :mod:`.synthesis` (sentences to clips), :mod:`.corpus`
(splits, generation, cache).
"""

from __future__ import annotations

from .corpus import builtin_corpus, default_cache_dir
from .grammar import normalize_text, sentence_pool, sentence_to_glosses
from .lexicon import FPS, HANDSHAPES, LOCATIONS, PALMS, VERSION, VOCABULARY, Sign
from .synthesis import alternate_renditions, synthesize

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

"""The built-in procedural signing corpus (sald_fast.data.builtin)."""

from __future__ import annotations

import hashlib
import itertools

import numpy as np
import pytest
import torch

from sald_fast.data import check_clip, load_clips
from sald_fast.data.builtin import arm_hand
from sald_fast.data.builtin import (VOCABULARY, alternate_renditions, builtin_corpus, sentence_pool, sentence_to_glosses,
                                     synthesize)
from sald_fast.features import features_to_positions, smplx_to_features
from sald_fast.geometry import axis_angle_to_matrix, forward_kinematics
from sald_fast.skeleton import SIGNING_SKELETON as SK

SMALL = dict(num_train=240, num_val=30, num_test=30)
FIELDS = ("global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "transl")


def positions(clip: dict) -> np.ndarray:
    """(T, 44, 3) joint positions of a clip (FK through sald_fast.features)."""
    feat = smplx_to_features(*(clip[f] for f in FIELDS))
    return features_to_positions(feat).numpy()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return builtin_corpus(seed=0, cache_dir=tmp_path_factory.mktemp("cache"), **SMALL)


def assert_corpora_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for split in a:
        assert len(a[split]) == len(b[split])
        for x, y in zip(a[split], b[split]):
            assert x["text"] == y["text"] and x["name"] == y["name"] and x["glosses"] == y["glosses"]
            for f in FIELDS:
                np.testing.assert_array_equal(x[f], y[f])


def test_deterministic_for_a_seed():
    a = builtin_corpus(seed=3, cache=False, **SMALL)
    b = builtin_corpus(seed=3, cache=False, **SMALL)
    assert_corpora_equal(a, b)


def test_different_seeds_differ():
    a = builtin_corpus(seed=0, cache=False, **SMALL)
    b = builtin_corpus(seed=1, cache=False, **SMALL)
    assert [c["text"] for c in a["train"]] != [c["text"] for c in b["train"]]
    # same sentence, different signer variation
    shared = {c["text"]: c for c in a["train"]}
    pairs = [(shared[c["text"]], c) for c in b["train"] if c["text"] in shared]
    assert pairs
    x, y = pairs[0]
    a, b = x["right_hand_pose"], y["right_hand_pose"]
    assert a.shape != b.shape or not np.allclose(a, b)


def test_vocabulary():
    assert len(VOCABULARY) >= 100
    cats = {s.category for s in VOCABULARY.values()}
    for needed in ("pronouns", "people", "places", "things", "verbs with an object", "adjectives", "question words"):
        assert needed in cats
    hands = {s.hands for s in VOCABULARY.values()}
    assert hands == {"one", "sym", "alt", "base"}
    params = [(s.hands, s.location, s.handshape, s.palm, s.path, s.direction, s.repetitions, s.end_handshape,
               s.base_handshape, s.base_palm, s.modifier, s.amplitude) for s in VOCABULARY.values()]
    assert len(set(params)) == len(params), "two signs with identical parameters"
    used = {g for _, glosses, _, _ in sentence_pool() for g in glosses}
    assert used == set(VOCABULARY), f"signs no sentence uses: {set(VOCABULARY) - used}"


def test_sentence_to_glosses():
    assert sentence_to_glosses("where is the library?") == ["library", "where"]
    assert sentence_to_glosses("I like my new teacher") == ["my", "new", "teacher", "like"]
    assert sentence_to_glosses("the dog is happy") == ["dog", "happy"]
    assert sentence_to_glosses("do you like coffee?") == ["coffee", "you", "like"]
    with pytest.raises(KeyError):
        sentence_to_glosses("the library is purple and flies")
    texts = [row[0] for row in sentence_pool()]
    assert len(texts) == len(set(texts)) >= 3400


def test_splits_hold_out_sentences(corpus):
    texts = {s: [c["text"] for c in clips] for s, clips in corpus.items()}
    assert [len(texts[s]) for s in ("train", "val", "test")] == [240, 30, 30]
    for s in texts:
        assert len(set(texts[s])) == len(texts[s])
    assert not set(texts["train"]) & set(texts["val"])
    assert not set(texts["train"]) & set(texts["test"])
    assert not set(texts["val"]) & set(texts["test"])
    train_signs = {g for c in corpus["train"] for g in c["glosses"].split()}
    assert train_signs == set(VOCABULARY), "every sign must occur in train"
    for c in corpus["train"] + corpus["test"]:
        assert c["glosses"].split() == sentence_to_glosses(c["text"])


def test_clips_are_valid(corpus):
    names = set()
    lengths = []
    for split, clips in corpus.items():
        for c in clips:
            checked = check_clip(c)  # raises on any problem
            T = c["global_orient"].shape[0]
            lengths.append(T)
            assert c["fps"] == 25.0 and c["name"].startswith(f"builtin_{split}_")
            assert c["body_pose"].shape == (T, 21, 3) and c["left_hand_pose"].shape == (T, 15, 3)
            assert c["right_hand_pose"].shape == (T, 15, 3) and c["transl"].shape == (T, 3)
            for f in FIELDS:
                assert c[f].dtype == np.float32 and np.isfinite(c[f]).all()
                np.testing.assert_array_equal(checked[f], c[f])
            # legs (SMPL-X hips, knees, ankles, feet) are not animated
            assert np.all(c["body_pose"][:, [0, 1, 3, 4, 6, 7, 9, 10]] == 0)
            names.add(c["name"])
    assert len(names) == sum(len(v) for v in corpus.values())
    lengths = np.array(lengths)
    assert lengths.min() >= 20 and lengths.max() <= 160
    assert np.mean((lengths >= 40) & (lengths <= 120)) > 0.9
    assert np.median(lengths) < 80


def test_hands_move_and_speeds_are_human(corpus):
    rw = SK.index("right_wrist")
    for c in corpus["val"]:
        P = positions(c)
        assert np.ptp(P[:, rw], axis=0).max() > 0.10, c["text"]  # the dominant hand travels > 10 cm
        speed = np.linalg.norm(np.diff(P, axis=0), axis=-1) * 25.0
        assert speed[:, rw].max() < 3.5, c["text"]  # m/s
        # starts and ends in the rest pose: hands low and in front of the body
        for frame in (0, -1):
            assert P[frame, rw, 1] < P[frame, SK.index("spine3"), 1]


def _word_trajectories(words):
    out = []
    for w in words:
        P = positions(synthesize([w], variation=0.0))
        idx = np.linspace(0, len(P) - 1, 24).round().astype(int)
        out.append(P[idx][:, SK.index("head") + 1:])  # arms and hands (joints after the head)
    return np.stack(out)


def test_different_words_give_different_motions():
    words = list(VOCABULARY)
    traj = _word_trajectories(words)  # (W, 24, J, 3)
    W = len(words)
    worst = (np.inf, None)
    for i, j in itertools.combinations(range(W), 2):
        # the joint that differs most, averaged over (time-normalised) frames
        d = np.linalg.norm(traj[i] - traj[j], axis=-1).mean(0).max()
        worst = min(worst, (d, (words[i], words[j])))
    assert worst[0] > 0.02, f"signs too alike: {worst}"
    # location: chin vs forehead; handshape: flat vs L at the same place and path
    rw = SK.index("right_wrist") - SK.index("head") - 1
    mother, father = _word_trajectories(["mother", "father"])
    assert mother[:, rw, 1].mean() < father[:, rw, 1].mean() - 0.08
    man, brother = _word_trajectories(["man", "brother"])
    np.testing.assert_allclose(man[:, rw], brother[:, rw], atol=1e-4)  # same wrist path
    tips = [SK.index(f"right_{f}3") - SK.index("head") - 1 for f in ("middle", "ring", "pinky")]
    assert np.linalg.norm(man[:, tips] - brother[:, tips], axis=-1).max(0).min() > 0.04  # curled vs straight


def test_symmetric_signs_mirror_the_hands():
    mirror = np.array([-1.0, 1.0, 1.0])
    P = positions(synthesize(["table"], variation=0.0))  # symmetric two-handed
    for name in ("wrist", "elbow", "index3", "thumb3", "pinky3"):
        left, right = P[:, SK.index(f"left_{name}")], P[:, SK.index(f"right_{name}")]
        np.testing.assert_allclose(left, right * mirror, atol=1e-4)
    P = positions(synthesize(["mother"], variation=0.0))  # one-handed: the left hand rests
    lw = SK.index("left_wrist")
    assert np.ptp(P[:, lw], axis=0).max() < np.ptp(P[:, SK.index("right_wrist")], axis=0).max() / 3


def test_two_bone_ik_reaches_targets():
    rng = np.random.default_rng(0)
    targets = arm_hand._LEFT_SHOULDER + rng.normal(size=(200, 3)) * 0.15 + np.array([-0.1, -0.1, 0.3])
    reach = np.linalg.norm(targets - arm_hand._LEFT_SHOULDER, axis=1)
    targets = targets[(reach > 0.15) & (reach < 0.45)]
    swivel = rng.uniform(-0.5, 0.5, len(targets))
    sh, el = arm_hand._arm_pose(targets, swivel)
    local = torch.eye(3, dtype=torch.float64).repeat(len(targets), SK.num_joints, 1, 1)
    local[:, SK.index("left_shoulder")] = axis_angle_to_matrix(torch.from_numpy(sh))
    local[:, SK.index("left_elbow")] = axis_angle_to_matrix(torch.from_numpy(el))
    pos, _ = forward_kinematics(local, torch.from_numpy(SK.offsets.astype(np.float64)), SK.parents)
    np.testing.assert_allclose(pos[:, SK.index("left_wrist")].numpy(), targets, atol=1e-6)


def test_cache_reload_equals_fresh_generation(tmp_path):
    fresh = builtin_corpus(seed=5, cache=False, **SMALL)
    first = builtin_corpus(seed=5, cache_dir=tmp_path, **SMALL)
    files = list(tmp_path.glob("builtin_v*.npz"))
    assert len(files) == 1 and not list(tmp_path.glob("*.tmp"))
    stamp = files[0].stat().st_mtime_ns
    again = builtin_corpus(seed=5, cache_dir=tmp_path, **SMALL)
    assert files[0].stat().st_mtime_ns == stamp  # loaded, not rewritten
    assert_corpora_equal(fresh, first)
    assert_corpora_equal(fresh, again)
    with np.load(files[0], allow_pickle=False) as z:  # arrays only
        assert all(z[k].dtype != object for k in z.files)
    # other parameters -> another file; a corrupted file is regenerated with a warning
    builtin_corpus(seed=6, cache_dir=tmp_path, **SMALL)
    assert len(list(tmp_path.glob("builtin_v*.npz"))) == 2
    files[0].write_bytes(files[0].read_bytes()[:1000])
    with pytest.warns(UserWarning, match="unreadable"):
        repaired = builtin_corpus(seed=5, cache_dir=tmp_path, **SMALL)
    assert_corpora_equal(fresh, repaired)


def test_cache_keeps_only_the_newest_corpora(tmp_path):
    for seed in range(6):
        builtin_corpus(seed=seed, num_train=10, num_val=2, num_test=2, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("builtin_v*.npz"))) == 4


def test_synthesize_rejects_unknown_signs():
    with pytest.raises(ValueError, match="unknown sign 'purple'"):
        synthesize(["dog", "purple"])
    with pytest.raises(ValueError, match="at least one"):
        synthesize([])


def test_load_clips_builtin(tmp_path):
    val = load_clips("builtin", "val", root=tmp_path, seed=2, **SMALL)
    assert len(val) == 30 and all(c["fps"] == 25.0 for c in val)
    half = load_clips("builtin", "val", root=tmp_path, seed=2, fps=12.5, **SMALL)
    assert [c["global_orient"].shape[0] for c in half] == [(c["global_orient"].shape[0] - 1) // 2 + 1 for c in val]
    with pytest.raises(ValueError, match="split"):
        load_clips("builtin", "dev")
    with pytest.raises(ValueError, match="dataset"):
        load_clips("phoenix", "train")


def test_default_corpus_sizes():
    """The default corpus's split sizes (its generation time is in bench/test_bench_data.py)."""
    corpus = builtin_corpus(cache=False)
    assert [len(corpus[s]) for s in ("train", "val", "test")] == [3000, 200, 200]


# sha256 of the corpus below, computed on the code before sald_fast/data/builtin.py was split into
# a package (commit 7957a28): the split and later refactors must not change a bit of the corpus.
# A deliberate change to the generated data bumps builtin.VERSION and this digest together.
CORPUS_SHA256 = "ee55aeb8f94f78004e94fd864135d6642eadfbd72081a76f585a9621fad5b157"


def corpus_digest() -> str:
    """sha256 over a small corpus (seed 0, 240/30/30), the val split's alternate renditions, one
    synthesized clip, the sentence pool and the lexicon: names, texts, glosses, dtypes, shapes, bytes."""
    h = hashlib.sha256()

    def add(c: dict) -> None:
        h.update(f"{c['name']}|{c['text']}|{c['glosses']}|{c['fps']}".encode())
        for f in FIELDS:
            a = np.ascontiguousarray(c[f])
            h.update(str((a.dtype, a.shape)).encode())
            h.update(a.tobytes())

    corpus = builtin_corpus(seed=0, cache=False, **SMALL)
    for split in ("train", "val", "test"):
        for c in corpus[split]:
            add(c)
    for c in alternate_renditions(corpus["val"], seed=1):
        add(c)
    add(synthesize(["hello", "my", "teacher", "where"], seed=5, kind=1))
    h.update(repr(sentence_pool()).encode())
    h.update(repr(sorted(VOCABULARY.items())).encode())
    return h.hexdigest()


def test_corpus_is_bit_identical_to_the_pinned_hash():
    assert corpus_digest() == CORPUS_SHA256

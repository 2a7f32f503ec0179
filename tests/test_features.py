"""SMPL-X parameters <-> features, FK positions of features, and the feature normaliser."""

import math

import numpy as np
import pytest
import torch
from smplx.joint_names import JOINT_NAMES as SMPLX_JOINT_NAMES
from smplx.lbs import batch_rigid_transform, batch_rodrigues

from sald_fast.features import (
    FEATURE_DIM,
    FeatureNormalizer,
    features_to_positions,
    features_to_rotmats,
    features_to_smplx,
    smplx_to_features,
)
from sald_fast.skeleton import SIGNING_SKELETON

# body_pose joints (SMPL-X 1..21) that the upper-body skeleton drops
DROPPED_BODY = [i - 1 for i in range(1, 22) if i not in SIGNING_SKELETON.smplx_indices]


def _params(lead: tuple[int, ...], seed: int = 0, scale: float = 0.8, dtype=np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "global_orient": (rng.standard_normal((*lead, 3)) * scale).astype(dtype),
        "body_pose": (rng.standard_normal((*lead, 21, 3)) * scale).astype(dtype),
        "left_hand_pose": (rng.standard_normal((*lead, 15, 3)) * scale).astype(dtype),
        "right_hand_pose": (rng.standard_normal((*lead, 15, 3)) * scale).astype(dtype),
        "transl": rng.standard_normal((*lead, 3)).astype(dtype),
    }


def _aa_by_name(p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Axis-angle of every SMPL-X joint by its SMPL-X name (the test's own mapping)."""
    out = {"pelvis": p["global_orient"]}
    for i in range(21):
        out[SMPLX_JOINT_NAMES[1 + i]] = p["body_pose"][..., i, :]
    for i in range(15):
        out[SMPLX_JOINT_NAMES[25 + i]] = p["left_hand_pose"][..., i, :]
        out[SMPLX_JOINT_NAMES[40 + i]] = p["right_hand_pose"][..., i, :]
    return out


def _rodrigues(aa: np.ndarray) -> torch.Tensor:
    a = torch.as_tensor(aa, dtype=torch.float64)
    return batch_rodrigues(a.reshape(-1, 3)).view(*a.shape[:-1], 3, 3)


def test_features_layout():
    p = _params((2, 5))
    feat = smplx_to_features(**p)
    assert feat.shape == (2, 5, 44, FEATURE_DIM) and feat.dtype == torch.float32
    torch.testing.assert_close(feat[..., 0, 6:], torch.from_numpy(p["transl"]))
    assert (feat[..., 1:, 6:] == 0).all()
    by_name = _aa_by_name(p)
    for j, name in enumerate(SIGNING_SKELETON.names):
        R = _rodrigues(by_name[name])
        torch.testing.assert_close(feat[..., j, :3].double(), R[..., :, 0], atol=1e-5, rtol=0)
        torch.testing.assert_close(feat[..., j, 3:6].double(), R[..., :, 1], atol=1e-5, rtol=0)
    # float64 input keeps float64; flat (T, 63)/(T, 45) layouts give the same features
    p64 = _params((5,), seed=1, dtype=np.float64)
    flat = dict(p64, body_pose=p64["body_pose"].reshape(5, 63), left_hand_pose=p64["left_hand_pose"].reshape(5, 45),
                right_hand_pose=torch.from_numpy(p64["right_hand_pose"].reshape(5, 45)))
    f64 = smplx_to_features(**p64)
    assert f64.dtype == torch.float64
    torch.testing.assert_close(smplx_to_features(**flat), f64)


def test_dropped_joints_do_not_matter():
    p = _params((4,), seed=2)
    q = dict(p, body_pose=p["body_pose"].copy())
    q["body_pose"][:, DROPPED_BODY] = 1.0
    torch.testing.assert_close(smplx_to_features(**p), smplx_to_features(**q))


def test_smplx_round_trip():
    p = _params((3, 6), seed=3, scale=1.2)
    out = features_to_smplx(smplx_to_features(**p))
    assert set(out) == {"global_orient", "body_pose", "left_hand_pose", "right_hand_pose", "transl"}
    for k, v in out.items():
        assert isinstance(v, np.ndarray) and v.dtype == np.float32 and v.shape == p[k].shape, k
    np.testing.assert_allclose(out["transl"], p["transl"], atol=1e-6)
    assert (out["body_pose"][..., DROPPED_BODY, :] == 0).all()
    kept = [i for i in range(21) if i not in DROPPED_BODY]
    for key, sel in (("global_orient", ...), ("body_pose", kept), ("left_hand_pose", ...), ("right_hand_pose", ...)):
        a = p[key] if sel is ... else p[key][..., sel, :]
        b = out[key] if sel is ... else out[key][..., sel, :]
        # compare rotations (axis-angle is ambiguous by 2 pi): matrices equal
        torch.testing.assert_close(_rodrigues(b), _rodrigues(a), atol=1e-5, rtol=0)
        assert (np.linalg.norm(b, axis=-1) <= math.pi + 1e-5).all()


def test_features_to_rotmats():
    p = _params((7,), seed=4)
    rot, transl = features_to_rotmats(smplx_to_features(**p))
    assert rot.shape == (7, 44, 3, 3) and transl.shape == (7, 3)
    torch.testing.assert_close(rot[:, 0].double(), _rodrigues(p["global_orient"]), atol=1e-5, rtol=0)
    # un-orthogonal model output still gives proper rotations
    noisy = smplx_to_features(**p) + 0.3 * torch.randn(7, 44, FEATURE_DIM, generator=torch.Generator().manual_seed(0))
    R, _ = features_to_rotmats(noisy)
    torch.testing.assert_close(R.transpose(-1, -2) @ R, torch.eye(3).expand(7, 44, 3, 3), atol=1e-5, rtol=0)


def test_positions_equal_smplx_fk():
    """features_to_positions against smplx's batch_rigid_transform on the raw parameters."""
    T = 5
    p = _params((T,), seed=5, dtype=np.float64)
    by_name = _aa_by_name(p)
    rot = torch.stack([_rodrigues(by_name[n]) for n in SIGNING_SKELETON.names], dim=1)  # (T, 44, 3, 3)
    rest = torch.as_tensor(SIGNING_SKELETON.rest_positions(), dtype=torch.float64).expand(T, 44, 3).contiguous()
    posed, _ = batch_rigid_transform(rot, rest, torch.tensor(SIGNING_SKELETON.parents), dtype=torch.float64)
    expected = posed + torch.from_numpy(p["transl"])[:, None]
    torch.testing.assert_close(features_to_positions(smplx_to_features(**p)), expected, atol=1e-6, rtol=0)
    # custom offsets (numpy or tensor): doubling every bone and the root rest position doubles the
    # positions relative to the translation
    feat = smplx_to_features(**p)
    doubled = features_to_positions(feat, 2 * SIGNING_SKELETON.offsets)
    torch.testing.assert_close(doubled - feat[:, None, 0, 6:], 2 * (expected - feat[:, None, 0, 6:]), atol=1e-6, rtol=0)
    torch.testing.assert_close(features_to_positions(feat, torch.as_tensor(2 * SIGNING_SKELETON.offsets)), doubled)


def test_positions_differentiable():
    feat = smplx_to_features(**_params((2, 4), seed=6)).requires_grad_()
    features_to_positions(feat).square().sum().backward()
    assert torch.isfinite(feat.grad).all()
    assert feat.grad[..., :6].abs().sum() > 0 and feat.grad[..., 0, 6:].abs().sum() > 0
    assert (feat.grad[..., 1:, 6:] == 0).all()  # non-root translation channels are unused


def test_smplx_to_features_bad_input():
    p = _params((4,))
    with pytest.raises(ValueError, match=r"body_pose must have shape.*got \(4, 20, 3\)"):
        smplx_to_features(**dict(p, body_pose=np.zeros((4, 20, 3), np.float32)))
    with pytest.raises(ValueError, match="left_hand_pose"):
        smplx_to_features(**dict(p, left_hand_pose=np.zeros((5, 15, 3), np.float32)))  # T mismatch
    with pytest.raises(ValueError, match="transl"):
        smplx_to_features(**dict(p, transl=np.zeros((4, 2), np.float32)))
    with pytest.raises(ValueError, match="global_orient"):
        smplx_to_features(**dict(p, global_orient=np.zeros((4, 4), np.float32)))
    bad = p["right_hand_pose"].copy()
    bad[2, 3, 1] = np.nan
    with pytest.raises(ValueError, match="right_hand_pose contains NaN"):
        smplx_to_features(**dict(p, right_hand_pose=bad))
    with pytest.raises(ValueError, match="transl contains NaN or inf"):
        smplx_to_features(**dict(p, transl=np.full((4, 3), np.inf, np.float32)))
    with pytest.raises(TypeError, match="body_pose"):
        smplx_to_features(**dict(p, body_pose=[[0.0] * 63] * 4))
    with pytest.raises(ValueError, match=r"features must have shape \(\.\.\., 44, 9\)"):
        features_to_positions(torch.zeros(3, 44, 6))
    with pytest.raises(ValueError, match="features must have shape"):
        features_to_smplx(np.zeros((3, 43, 9)))


def _random_features(B: int, T: int, seed: int) -> torch.Tensor:
    g = np.random.default_rng(seed)
    p = _params((B, T), seed=seed)
    feat = smplx_to_features(**p)
    return feat + torch.from_numpy(g.standard_normal(feat.shape).astype(np.float32)) * 0.01 * (feat != 0)


def test_normalizer_round_trip_and_stats():
    feat = _random_features(4, 16, seed=7)
    norm = FeatureNormalizer().fit(feat)
    assert norm.mean.shape == (44, 9) and norm.std.shape == (44, 9)
    z = norm.normalize(feat)
    flat = z.reshape(-1, 44, 9).double()
    varying = feat.reshape(-1, 44, 9).std(0) > 1e-3
    torch.testing.assert_close(flat.mean(0), torch.zeros(44, 9, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(flat.std(0, unbiased=False)[varying], torch.ones(int(varying.sum()), dtype=torch.float64),
                               atol=1e-4, rtol=0)
    torch.testing.assert_close(norm.denormalize(z), feat, atol=1e-5, rtol=1e-5)
    assert norm(feat).dtype == torch.float32 and norm.normalize(feat.double()).dtype == torch.float64
    # statistics travel in the state_dict
    sd = norm.state_dict()
    assert set(sd) == {"mean", "std"}
    other = FeatureNormalizer()
    other.load_state_dict(sd)
    torch.testing.assert_close(other.normalize(feat), z)


def test_normalizer_zero_channels_stay_zero():
    feat = _random_features(2, 8, seed=8)
    norm = FeatureNormalizer().fit(feat)
    # translation channels of non-root joints are identically 0: std 1, mean 0
    assert (norm.std[1:, 6:] == 1).all() and (norm.mean[1:, 6:] == 0).all()
    assert (norm.normalize(feat)[..., 1:, 6:] == 0).all()
    assert (norm.denormalize(torch.zeros(3, 44, 9))[..., 1:, 6:] == 0).all()
    # a constant non-zero channel normalises to 0 (std floor 1, mean kept)
    const = feat.clone()
    const[..., 5, 0] = 0.25
    n2 = FeatureNormalizer().fit(const)
    assert n2.std[5, 0] == 1 and torch.isclose(n2.mean[5, 0], torch.tensor(0.25))
    assert (n2.normalize(const)[..., 5, 0].abs() < 1e-6).all()


def test_normalizer_ignores_masked_frames():
    feat = _random_features(3, 10, seed=9)
    lengths = [10, 4, 7]
    mask = torch.arange(10)[None] < torch.tensor(lengths)[:, None]
    padded = feat.clone()
    padded[~mask] = torch.nan  # padding content must not matter, even NaN
    masked = FeatureNormalizer().fit(padded, mask)
    valid_only = FeatureNormalizer().fit(torch.cat([feat[b, :n] for b, n in enumerate(lengths)]))
    torch.testing.assert_close(masked.mean, valid_only.mean)
    torch.testing.assert_close(masked.std, valid_only.std)
    unmasked = FeatureNormalizer().fit(feat)
    assert not torch.allclose(unmasked.mean, valid_only.mean)
    # an iterable of (features, mask) chunks gives the same statistics
    chunked = FeatureNormalizer().fit([(padded[:1], mask[:1]), (padded[1:], mask[1:].numpy())])
    torch.testing.assert_close(chunked.mean, valid_only.mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(chunked.std, valid_only.std, atol=1e-6, rtol=0)


def test_normalizer_bad_input():
    norm = FeatureNormalizer()
    with pytest.raises(ValueError, match=r"features must have shape \(\.\.\., 44, 9\)"):
        norm.fit(torch.zeros(5, 44, 6))
    with pytest.raises(ValueError, match="mask of features must have shape"):
        norm.fit(torch.zeros(2, 5, 44, 9), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="mask of features must be bool"):
        norm.fit(torch.zeros(2, 5, 44, 9), torch.ones(2, 5))
    with pytest.raises(ValueError, match="no valid frames"):
        norm.fit(torch.zeros(2, 5, 44, 9), torch.zeros(2, 5, dtype=torch.bool))
    bad = torch.zeros(2, 5, 44, 9)
    bad[1, 2, 3, 4] = torch.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        norm.fit(bad)
    with pytest.raises(ValueError, match=r"x must have shape"):
        norm.normalize(torch.zeros(3, 9, 44))
    with pytest.raises(TypeError, match="features must be a tensor"):
        norm.fit("features")
    # a failed fit leaves the statistics untouched
    assert (norm.mean == 0).all() and (norm.std == 1).all()

"""Rotation conversions and forward kinematics against independent oracles (``smplx.lbs``,
and scipy where installed)."""

import math

import numpy as np
import pytest
import torch
from smplx.lbs import batch_rigid_transform, batch_rodrigues

from sald_fast.geometry import (
    axis_angle_to_matrix,
    axis_angle_to_quaternion,
    forward_kinematics,
    matrix_to_axis_angle,
    matrix_to_quaternion,
    matrix_to_rot6d,
    quaternion_multiply,
    quaternion_slerp,
    quaternion_to_axis_angle,
    rot6d_to_matrix,
)
from sald_fast.skeleton import SIGNING_SKELETON

PARENTS = SIGNING_SKELETON.parents


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_aa(n: int, max_angle: float, g: torch.Generator, min_angle: float = 0.0) -> torch.Tensor:
    axis = torch.nn.functional.normalize(torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1)
    angle = min_angle + (max_angle - min_angle) * torch.rand(n, 1, generator=g, dtype=torch.float64)
    return axis * angle


def _assert_rotation(R: torch.Tensor, atol: float) -> None:
    eye = torch.eye(3, dtype=R.dtype).expand_as(R)
    torch.testing.assert_close(R.transpose(-1, -2) @ R, eye, atol=atol, rtol=0)
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(R.shape[:-2], dtype=R.dtype), atol=atol, rtol=0)


def test_axis_angle_to_matrix_vs_smplx():
    aa = _random_aa(500, 3.0, _gen(1), min_angle=0.01)
    torch.testing.assert_close(axis_angle_to_matrix(aa), batch_rodrigues(aa), atol=1e-6, rtol=0)
    # fp32 too (smplx adds 1e-8 to the vector before the norm, hence the tolerance)
    torch.testing.assert_close(axis_angle_to_matrix(aa.float()), batch_rodrigues(aa.float()), atol=1e-5, rtol=0)


def test_axis_angle_to_matrix_small_angles_exact():
    # R = exp([aa]_x): for tiny angles compare with the matrix exponential (no shortcuts)
    for scale in (0.0, 1e-9, 1e-5, 5e-3, 2e-2):
        aa = _random_aa(20, scale, _gen(2), min_angle=scale)
        K = torch.zeros(20, 3, 3, dtype=torch.float64)
        K[:, 0, 1], K[:, 0, 2], K[:, 1, 2] = -aa[:, 2], aa[:, 1], -aa[:, 0]
        K = K - K.transpose(1, 2)
        torch.testing.assert_close(axis_angle_to_matrix(aa), torch.linalg.matrix_exp(K), atol=1e-14, rtol=0)


def test_axis_angle_round_trip():
    g = _gen(3)
    aa = torch.cat([_random_aa(1000, math.pi - 1e-3, g), _random_aa(50, 1e-6, g), torch.zeros(1, 3, dtype=torch.float64)])
    R = axis_angle_to_matrix(aa)
    _assert_rotation(R, 1e-12)
    torch.testing.assert_close(matrix_to_axis_angle(R), aa, atol=1e-9, rtol=0)
    # float32 keeps its dtype and is accurate to fp32 precision
    out = matrix_to_axis_angle(R.float())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, aa.float(), atol=2e-3, rtol=0)


def test_matrix_to_axis_angle_near_pi():
    g = _gen(4)
    aa = _random_aa(500, math.pi, g, min_angle=math.pi - 1e-4)
    R = axis_angle_to_matrix(aa)
    back = matrix_to_axis_angle(R)
    assert (back.norm(dim=-1) <= math.pi + 1e-9).all()
    torch.testing.assert_close(axis_angle_to_matrix(back), R, atol=1e-9, rtol=0)
    # exact half turns about the coordinate axes
    for axis in torch.eye(3, dtype=torch.float64):
        back = matrix_to_axis_angle(axis_angle_to_matrix(axis * math.pi))
        torch.testing.assert_close(back.abs(), axis * math.pi, atol=1e-7, rtol=0)
    for R32 in (R.float(),):
        torch.testing.assert_close(axis_angle_to_matrix(matrix_to_axis_angle(R32)), R32, atol=1e-5, rtol=0)


def test_matrix_to_axis_angle_vs_scipy():
    Rotation = pytest.importorskip("scipy.spatial.transform").Rotation
    aa = _random_aa(300, math.pi - 1e-3, _gen(5))
    R = axis_angle_to_matrix(aa)
    expected = torch.from_numpy(Rotation.from_matrix(R.numpy()).as_rotvec())
    torch.testing.assert_close(matrix_to_axis_angle(R), expected, atol=1e-9, rtol=0)


def test_rot6d_round_trip_and_projection():
    g = _gen(6)
    R = axis_angle_to_matrix(_random_aa(200, math.pi, g))
    six = matrix_to_rot6d(R)
    assert six.shape == (200, 6)
    torch.testing.assert_close(six[:, :3], R[:, :, 0])  # first two COLUMNS
    torch.testing.assert_close(six[:, 3:], R[:, :, 1])
    torch.testing.assert_close(rot6d_to_matrix(six), R, atol=1e-12, rtol=0)
    # any 6-vector -> a proper rotation whose first column is along the first 3-vector
    x = torch.randn(4, 50, 6, generator=g, dtype=torch.float64) * 3
    Rx = rot6d_to_matrix(x)
    assert Rx.shape == (4, 50, 3, 3)
    _assert_rotation(Rx, 1e-12)
    torch.testing.assert_close(Rx[..., :, 0], torch.nn.functional.normalize(x[..., :3], dim=-1))
    # the second column lies in the plane of the two 3-vectors
    normal = torch.linalg.cross(x[..., :3], x[..., 3:], dim=-1)
    torch.testing.assert_close((Rx[..., :, 1] * normal).sum(-1), torch.zeros(4, 50, dtype=torch.float64),
                               atol=1e-9, rtol=0)
    _assert_rotation(rot6d_to_matrix(x.float()), 1e-5)


def test_rot6d_zero_is_finite():
    R = rot6d_to_matrix(torch.zeros(2, 6, requires_grad=True))
    assert torch.isfinite(R).all()


def _smplx_fk(rotmats: torch.Tensor, offsets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Oracle: smplx's batch_rigid_transform on absolute rest joints (B, J, 3)."""
    rest = torch.zeros_like(offsets)
    for j, p in enumerate(PARENTS):
        rest[j] = offsets[j] + (rest[p] if p >= 0 else 0)
    B = rotmats.shape[0]
    posed, rel = batch_rigid_transform(rotmats, rest.expand(B, -1, -1).contiguous(), torch.tensor(PARENTS),
                                       dtype=rotmats.dtype)
    return posed, rel[..., :3, :3]


@pytest.mark.parametrize("random_offsets", [False, True])
def test_forward_kinematics_vs_smplx(random_offsets):
    g = _gen(7)
    B = 6
    rotmats = axis_angle_to_matrix(_random_aa(B * 44, math.pi, g)).view(B, 44, 3, 3)
    offsets = torch.tensor(SIGNING_SKELETON.offsets, dtype=torch.float64)
    if random_offsets:
        offsets = torch.randn(44, 3, generator=g, dtype=torch.float64) * 0.2
    posed, global_rot = _smplx_fk(rotmats, offsets)
    pos, glob = forward_kinematics(rotmats, offsets, PARENTS)
    torch.testing.assert_close(pos, posed, atol=1e-12, rtol=0)
    torch.testing.assert_close(glob, global_rot, atol=1e-12, rtol=0)
    # root translation shifts every joint; ndarray offsets, list parents, fp32
    t = torch.randn(B, 3, generator=g, dtype=torch.float64)
    pos_t, _ = forward_kinematics(rotmats.float(), offsets.numpy(), list(PARENTS), t.float())
    assert pos_t.dtype == torch.float32
    torch.testing.assert_close(pos_t, (posed + t[:, None]).float(), atol=1e-5, rtol=0)


def test_forward_kinematics_leading_dims():
    g = _gen(8)
    rotmats = axis_angle_to_matrix(_random_aa(2 * 3 * 5 * 44, 2.0, g).float()).view(2, 3, 5, 44, 3, 3)
    t = torch.randn(2, 3, 5, 3, generator=g)
    pos, glob = forward_kinematics(rotmats, SIGNING_SKELETON.offsets, PARENTS, t)
    assert pos.shape == (2, 3, 5, 44, 3) and glob.shape == (2, 3, 5, 44, 3, 3)
    flat_pos, flat_glob = forward_kinematics(rotmats.view(30, 44, 3, 3), SIGNING_SKELETON.offsets, PARENTS, t.view(30, 3))
    torch.testing.assert_close(pos.view(30, 44, 3), flat_pos)
    torch.testing.assert_close(glob.view(30, 44, 3, 3), flat_glob)
    # no batch dims at all
    one, _ = forward_kinematics(rotmats[0, 0, 0], SIGNING_SKELETON.offsets, PARENTS, t[0, 0, 0])
    torch.testing.assert_close(one, pos[0, 0, 0])


def test_identity_pose_gives_rest_skeleton():
    eye = torch.eye(3).expand(7, 44, 3, 3)
    pos, glob = forward_kinematics(eye, SIGNING_SKELETON.offsets, PARENTS)
    rest = torch.as_tensor(SIGNING_SKELETON.rest_positions(), dtype=torch.float32)
    torch.testing.assert_close(pos, rest.expand(7, 44, 3))
    torch.testing.assert_close(glob, eye)


def test_bone_lengths_preserved():
    g = _gen(9)
    rotmats = axis_angle_to_matrix(_random_aa(3 * 44, math.pi, g)).view(3, 44, 3, 3)
    pos, _ = forward_kinematics(rotmats, SIGNING_SKELETON.offsets, PARENTS)
    child = torch.arange(1, 44)
    lengths = (pos[:, child] - pos[:, torch.tensor(PARENTS[1:])]).norm(dim=-1)
    expected = torch.as_tensor(np.linalg.norm(SIGNING_SKELETON.offsets[1:], axis=1), dtype=torch.float64)
    torch.testing.assert_close(lengths, expected.expand(3, 43), atol=1e-6, rtol=0)


def test_gradients_finite_at_zero_and_pi():
    aa = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    R = axis_angle_to_matrix(aa)
    (R * torch.randn(3, 3, 3, generator=_gen(10), dtype=torch.float64)).sum().backward()
    assert torch.isfinite(aa.grad).all() and aa.grad.abs().sum() > 0
    # the derivative at 0 is the cross-product generator: dR/da_x = [e_x]_x
    jac = torch.autograd.functional.jacobian(axis_angle_to_matrix, torch.zeros(3, dtype=torch.float64))
    assert torch.equal(jac[:, :, 0], torch.tensor([[0, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=torch.float64))
    for aa0 in (torch.zeros(4, 3, dtype=torch.float64), torch.tensor([[math.pi, 0, 0]], dtype=torch.float64)):
        R = axis_angle_to_matrix(aa0).requires_grad_()
        matrix_to_axis_angle(R).sum().backward()
        assert torch.isfinite(R.grad).all()
    six = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    rot6d_to_matrix(six).sum().backward()
    assert torch.isfinite(six.grad).all()


def test_gradcheck():
    g = _gen(11)
    aa = torch.cat([_random_aa(5, 3.0, g), _random_aa(2, 1e-3, g), torch.zeros(1, 3, dtype=torch.float64)])
    assert torch.autograd.gradcheck(axis_angle_to_matrix, (aa.requires_grad_(),))
    R = axis_angle_to_matrix(_random_aa(6, 3.0, g)).requires_grad_()
    assert torch.autograd.gradcheck(matrix_to_axis_angle, (R,))
    six = torch.randn(6, 6, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(rot6d_to_matrix, (six,))
    rot = axis_angle_to_matrix(_random_aa(2 * 44, 3.0, g)).view(2, 44, 3, 3).requires_grad_()
    off = torch.randn(44, 3, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda r, o, tt: forward_kinematics(r, o, PARENTS, tt), (rot, off, t))


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"aa must have shape \(\.\.\., 3\)"):
        axis_angle_to_matrix(torch.zeros(4, 4))
    with pytest.raises(TypeError, match="floating point"):
        axis_angle_to_matrix(torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        axis_angle_to_matrix(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="R must have shape"):
        matrix_to_axis_angle(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="x must have shape"):
        rot6d_to_matrix(torch.zeros(4, 9))
    eye = torch.eye(3).expand(2, 44, 3, 3)
    with pytest.raises(ValueError, match="offsets must have shape"):
        forward_kinematics(eye, torch.zeros(43, 3), PARENTS)
    with pytest.raises(ValueError, match="parents has 43"):
        forward_kinematics(eye, torch.zeros(44, 3), PARENTS[:43])
    with pytest.raises(ValueError, match="parents"):
        forward_kinematics(eye, torch.zeros(44, 3), (-1, 2) + PARENTS[2:])
    with pytest.raises(ValueError, match="root_translation must have shape"):
        forward_kinematics(eye, torch.zeros(44, 3), PARENTS, torch.zeros(3, 3))
    with pytest.raises(TypeError, match="offsets"):
        forward_kinematics(eye, [[0.0] * 3] * 44, PARENTS)


def test_forward_kinematics_dtype_and_autocast():
    rotmats = axis_angle_to_matrix(_random_aa(3 * 44, 2.0, _gen(12)).float()).view(3, 44, 3, 3)
    pos, glob = forward_kinematics(rotmats, SIGNING_SKELETON.offsets, PARENTS)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # FK stays in the input's precision
        pos_ac, glob_ac = forward_kinematics(rotmats, SIGNING_SKELETON.offsets, PARENTS)
    assert pos_ac.dtype == torch.float32 and glob_ac.dtype == torch.float32
    torch.testing.assert_close(pos_ac, pos)
    pos_bf, glob_bf = forward_kinematics(rotmats.bfloat16(), SIGNING_SKELETON.offsets, PARENTS)
    assert pos_bf.dtype == torch.bfloat16 and glob_bf.dtype == torch.bfloat16
    torch.testing.assert_close(pos_bf.float(), pos, atol=0.05, rtol=0)


def test_quaternion_helpers_match_matrices():
    """axis-angle <-> quaternion <-> matrix round trips and the Hamilton product agree with the
    matrices (the quaternion maths the data loaders use: resampling and the built-in corpus)."""
    rng = np.random.default_rng(1)
    aa = rng.normal(size=(500, 3)) * rng.uniform(0, 1.2, (500, 1))
    aa[:5] = [[0, 0, 0], [1e-9, 0, 0], [np.pi - 1e-7, 0, 0], [0, 0, 3.0], [1e-4, -2e-4, 0]]
    aa = torch.from_numpy(aa)
    R = axis_angle_to_matrix(aa)
    back = quaternion_to_axis_angle(matrix_to_quaternion(R))
    torch.testing.assert_close(axis_angle_to_matrix(back), R, atol=1e-7, rtol=0)
    q = axis_angle_to_quaternion(aa)
    torch.testing.assert_close(axis_angle_to_matrix(quaternion_to_axis_angle(q)), R, atol=1e-7, rtol=0)
    # composition
    q2 = axis_angle_to_quaternion(aa.flip(0))
    prod = quaternion_to_axis_angle(quaternion_multiply(q, q2))
    torch.testing.assert_close(axis_angle_to_matrix(prod), R @ axis_angle_to_matrix(aa.flip(0)), atol=1e-7, rtol=0)


def test_quaternion_slerp_halfway_and_ends():
    rng = np.random.default_rng(2)
    a, b = (torch.from_numpy(rng.normal(size=(100, 3)) * 0.8) for _ in range(2))
    Ra, Rb = axis_angle_to_matrix(a), axis_angle_to_matrix(b)
    qa, qb = axis_angle_to_quaternion(a), -axis_angle_to_quaternion(b)  # sign flip: still the shorter arc
    for w, want in ((0.0, Ra), (1.0, Rb)):
        got = quaternion_slerp(qa, qb, torch.full((100,), w, dtype=torch.float64))
        torch.testing.assert_close(axis_angle_to_matrix(quaternion_to_axis_angle(got)), want, atol=1e-9, rtol=0)
    rel = matrix_to_axis_angle(Ra.transpose(-1, -2) @ Rb)
    mid = quaternion_slerp(qa, qb, torch.full((100,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(axis_angle_to_matrix(quaternion_to_axis_angle(mid)), Ra @ axis_angle_to_matrix(rel / 2),
                               atol=1e-9, rtol=0)

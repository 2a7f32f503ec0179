"""SMPL-X meshes from the user's own model file, posed and rendered on the CPU.

The model file (``SMPLX_NEUTRAL.npz`` or ``.pkl`` from the SMPL-X site; licensed, so this project
never downloads or ships one) is read without executing code: an ``.npz`` with
``allow_pickle=False``, a ``.pkl`` through an unpickler that only rebuilds numpy arrays (and
scipy sparse matrices, when scipy is installed). Fields used: ``v_template`` (V, 3), ``f``
(F, 3), ``J_regressor`` (55, V), ``weights`` (V, 55), ``kintree_table`` (2, 55), ``posedirs``
(V, 3, 486). The shape is the neutral template (betas 0) and the face neutral (jaw, eyes and
expression 0).

Posing is linear blend skinning with the pose-corrective blend shapes, as in SMPL-X. Rendering
is a small numpy rasteriser (orthographic front and side views from fixed cameras, Lambert
shading, z-buffer): no OpenGL, no display.
"""

from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["SMPLXModel", "load_smplx_model", "pose_vertices", "full_pose", "render_mesh_frames", "SMPLX_NUM_JOINTS",
           "SMPLX_PARENTS"]

SMPLX_NUM_JOINTS = 55
# parent of each SMPL-X joint: body 0-21, jaw 22, eyes 23-24, left hand 25-39, right hand 40-54
SMPLX_PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 15, 15, 15,
                 20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
                 21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53)
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}
_SPARSE = {("scipy.sparse.csc", "csc_matrix"), ("scipy.sparse._csc", "csc_matrix"),
           ("scipy.sparse.csr", "csr_matrix"), ("scipy.sparse._csr", "csr_matrix")}


@dataclass(frozen=True)
class SMPLXModel:
    """The parts of an SMPL-X model used here (float64 arrays): v_template (V, 3), faces (F, 3)
    int64, J_regressor (55, V), weights (V, 55), parents (55,) int64 (-1 for the root),
    posedirs (V, 3, P) with P = 54 * 9; ``path`` is the file it came from."""

    v_template: np.ndarray
    faces: np.ndarray
    J_regressor: np.ndarray
    weights: np.ndarray
    parents: np.ndarray
    posedirs: np.ndarray
    path: str = ""

    @property
    def num_vertices(self) -> int:
        return self.v_template.shape[0]

    def rest_joints(self) -> np.ndarray:
        """(55, 3) joint positions of the neutral template."""
        return self.J_regressor @ self.v_template


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays, dicts, lists and scalars; any other global is refused."""

    def find_class(self, module: str, name: str):  # noqa: D102 - pickle API
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        if (module, name) in _SPARSE:
            try:
                return super().find_class(module, name)
            except ImportError:
                raise pickle.UnpicklingError(f"needs scipy for {module}.{name}") from None
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are read)")


def _read_fields(path: Path) -> dict[str, object]:
    suffix = path.suffix.lower()
    if suffix == ".npz":
        import zipfile

        if not zipfile.is_zipfile(path):
            raise ValueError(f"SMPL-X model file {str(path)!r} is not a readable .npz (not a zip archive)")
        try:
            return dict(np.load(path, allow_pickle=False))
        except ValueError as exc:  # a field stored as a Python object
            raise ValueError(f"SMPL-X model file {str(path)!r} holds pickled objects, which are not read: {exc}") from exc
        except Exception as exc:  # zipfile.BadZipFile, EOFError, ...
            raise ValueError(f"SMPL-X model file {str(path)!r} is not a readable .npz: {exc}") from exc
    if suffix == ".pkl":
        try:
            data = _ArraysOnlyUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError, TypeError, ValueError) as exc:
            raise ValueError(f"SMPL-X model file {str(path)!r} cannot be read safely ({exc}); convert it to .npz "
                             "with plain numpy arrays") from exc
        if not isinstance(data, dict):
            raise ValueError(f"SMPL-X model file {str(path)!r} holds a {type(data).__name__}, not a dict of arrays")
        return data
    raise ValueError(f"SMPL-X model file must be .npz or .pkl, got {path.name!r}")


def _field(fields: dict[str, object], name: str, path: Path, shape: tuple[int | None, ...], integer: bool = False) -> np.ndarray:
    if name not in fields:
        raise ValueError(f"SMPL-X model file {str(path)!r} has no field {name!r} (found: {', '.join(sorted(fields))})")
    value = fields[name]
    if hasattr(value, "toarray"):  # scipy sparse J_regressor in some .pkl files
        value = value.toarray()
    try:
        arr = np.asarray(value)
        arr = arr.astype(np.int64) if integer else arr.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"SMPL-X model file {str(path)!r}: field {name!r} is not numeric ({exc})") from exc
    if arr.ndim != len(shape) or any(s is not None and a != s for a, s in zip(arr.shape, shape)):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"SMPL-X model file {str(path)!r}: field {name!r} has shape {arr.shape}, expected {want}")
    if not integer and not np.isfinite(arr).all():
        raise ValueError(f"SMPL-X model file {str(path)!r}: field {name!r} holds NaN or inf")
    return arr


def load_smplx_model(path: str | os.PathLike) -> SMPLXModel:
    """Read an SMPL-X model file (.npz or .pkl) without executing code; a missing, unreadable
    or wrongly shaped file raises ``FileNotFoundError`` / ``ValueError`` naming the file and field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SMPL-X model file {str(path)!r} does not exist")
    fields = _read_fields(path)
    J = SMPLX_NUM_JOINTS
    v = _field(fields, "v_template", path, (None, 3))
    V = v.shape[0]
    reg = _field(fields, "J_regressor", path, (None, V))
    if reg.shape[0] != J:
        raise ValueError(f"SMPL-X model file {str(path)!r}: field 'J_regressor' has {reg.shape[0]} joints, "
                         f"an SMPL-X model has {J} (is it an SMPL or SMPL+H file?)")
    faces = _field(fields, "f", path, (None, 3), integer=True)
    if faces.size and (faces.min() < 0 or faces.max() >= V):
        raise ValueError(f"SMPL-X model file {str(path)!r}: field 'f' indexes vertices outside [0, {V})")
    weights = _field(fields, "weights", path, (V, J))
    kintree = _field(fields, "kintree_table", path, (2, J), integer=True)
    parents = kintree[0].copy()
    parents[0] = -1  # stored as 2**32 - 1
    if tuple(int(p) for p in parents) != SMPLX_PARENTS:
        raise ValueError(f"SMPL-X model file {str(path)!r}: field 'kintree_table' is not the SMPL-X kinematic tree")
    posedirs = _field(fields, "posedirs", path, (V, 3, (J - 1) * 9))
    return SMPLXModel(v_template=v, faces=faces, J_regressor=reg, weights=weights, parents=parents,
                      posedirs=posedirs, path=str(path))


def _rodrigues(aa: np.ndarray) -> np.ndarray:
    """Axis-angle (..., 3) -> rotation matrices (..., 3, 3)."""
    import torch

    from .geometry import axis_angle_to_matrix

    return axis_angle_to_matrix(torch.from_numpy(np.ascontiguousarray(aa, dtype=np.float64))).numpy()


def full_pose(smplx: dict[str, np.ndarray]) -> np.ndarray:
    """SMPL-X parameters with leading (N,) (global_orient (N, 3), body_pose (N, 21, 3),
    left/right_hand_pose (N, 15, 3)) -> axis-angles (N, 55, 3), jaw and eyes 0."""
    need = {"global_orient": (3,), "body_pose": (21, 3), "left_hand_pose": (15, 3), "right_hand_pose": (15, 3)}
    parts = {}
    for name, trailing in need.items():
        if name not in smplx:
            raise ValueError(f"SMPL-X parameters lack {name!r}")
        a = np.asarray(smplx[name], dtype=np.float64)
        if a.ndim != 1 + len(trailing) or a.shape[1:] != trailing:
            raise ValueError(f"SMPL-X parameter {name!r} must be (N, {', '.join(map(str, trailing))}), got {a.shape}")
        parts[name] = a
    N = parts["global_orient"].shape[0]
    out = np.zeros((N, SMPLX_NUM_JOINTS, 3))
    out[:, 0] = parts["global_orient"]
    out[:, 1:22] = parts["body_pose"]
    out[:, 25:40] = parts["left_hand_pose"]
    out[:, 40:55] = parts["right_hand_pose"]
    return out


def pose_vertices(model: SMPLXModel, smplx: dict[str, np.ndarray]) -> np.ndarray:
    """Vertices (N, V, 3) in metres of ``model`` posed by SMPL-X parameters with leading (N,)
    (see :func:`full_pose`; ``transl`` (N, 3) optional), by linear blend skinning."""
    pose = full_pose(smplx)
    N = pose.shape[0]
    R = _rodrigues(pose)  # (N, 55, 3, 3)
    J = model.rest_joints()
    eye = np.eye(3)
    pose_feature = (R[:, 1:] - eye).reshape(N, -1)  # (N, 486)
    v_posed = model.v_template[None] + np.einsum("np,vcp->nvc", pose_feature, model.posedirs)
    G = np.zeros((N, SMPLX_NUM_JOINTS, 4, 4))
    G[..., 3, 3] = 1.0
    for j, p in enumerate(model.parents):
        local = np.zeros((N, 4, 4))
        local[:, :3, :3] = R[:, j]
        local[:, :3, 3] = J[j] - (J[p] if p >= 0 else 0.0)
        local[:, 3, 3] = 1.0
        G[:, j] = local if p < 0 else G[:, p] @ local
    A = G.copy()
    A[..., :3, 3] -= np.einsum("njab,jb->nja", G[..., :3, :3], J)  # remove the rest joint position
    T = np.einsum("vj,njab->nvab", model.weights, A[..., :3, :])  # (N, V, 3, 4)
    verts = np.einsum("nvab,nvb->nva", T[..., :3], v_posed) + T[..., 3]
    if "transl" in smplx:
        verts = verts + np.asarray(smplx["transl"], dtype=np.float64).reshape(N, 1, 3)
    return verts


# view name -> (world axis for image x, sign), (world axis for image y-up, sign), (depth axis, sign; larger = nearer)
_VIEWS = {"front": ((0, 1.0), (1, 1.0), (2, 1.0)), "side": ((2, 1.0), (1, 1.0), (0, -1.0))}


def _rasterise(verts: np.ndarray, faces: np.ndarray, view: str, centre: np.ndarray, half: float, size: int,
               colour: np.ndarray) -> np.ndarray:
    """One (size, size, 3) uint8 image of a mesh (V, 3): orthographic camera of ``view`` looking
    at ``centre`` over a square of half-width ``half`` metres."""
    (ax, sx), (ay, sy), (az, sz) = _VIEWS[view]
    px = (sx * (verts[:, ax] - centre[ax]) / half + 1) * 0.5 * size
    py = (1 - sy * (verts[:, ay] - centre[ay]) / half) * 0.5 * size
    pz = sz * verts[:, az]
    tri = np.stack([px, py, pz], -1)[faces]  # (F, 3 corners, 3)
    # Lambert shading from a light over the viewer's shoulder, two-sided.
    world = verts[faces]
    normal = np.cross(world[:, 1] - world[:, 0], world[:, 2] - world[:, 0])
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True) + 1e-12
    light = np.zeros(3)
    light[az], light[ay], light[ax] = sz * 0.8, 0.5, -0.3 * sx
    light /= np.linalg.norm(light)
    shade = 0.25 + 0.75 * np.abs(normal @ light)
    # Sample each triangle on a barycentric grid finer than a pixel, then keep the nearest sample per pixel.
    edge = np.max(np.linalg.norm(tri[:, [1, 2, 0], :2] - tri[:, :, :2], axis=-1), axis=-1)
    steps = np.clip(np.ceil(edge / 0.6), 1, 64).astype(np.int64)
    xs, ys, zs, cs = [], [], [], []
    for n in np.unique(steps):
        sel = np.flatnonzero(steps == n)
        i, k = np.meshgrid(np.arange(n + 1), np.arange(n + 1), indexing="ij")
        keep = i + k <= n
        w = np.stack([i[keep], k[keep], n - i[keep] - k[keep]], -1) / n  # (P, 3)
        pts = np.einsum("pc,fcd->fpd", w, tri[sel])  # (f, P, 3)
        xs.append(pts[..., 0].ravel())
        ys.append(pts[..., 1].ravel())
        zs.append(pts[..., 2].ravel())
        cs.append(np.repeat(shade[sel], w.shape[0]))
    x = np.floor(np.concatenate(xs)).astype(np.int64)
    y = np.floor(np.concatenate(ys)).astype(np.int64)
    z = np.concatenate(zs)
    c = np.concatenate(cs)
    inside = (x >= 0) & (x < size) & (y >= 0) & (y < size)
    pix, z, c = (y * size + x)[inside], z[inside], c[inside]
    order = np.lexsort((-z, pix))  # per pixel, nearest first
    pix, c = pix[order], c[order]
    first = np.ones(pix.shape, dtype=bool)
    first[1:] = pix[1:] != pix[:-1]
    image = np.full((size * size, 3), 255.0)
    image[pix[first]] = c[first, None] * colour
    return image.reshape(size, size, 3).astype(np.uint8)


def render_mesh_frames(model: SMPLXModel, smplx: dict[str, np.ndarray], title: str | None = None,
                       size: int = 320, views: tuple[str, ...] = ("front", "side")) -> np.ndarray:
    """Frames (N, H, W, 3) uint8 of the posed mesh: one ``size`` x ``size`` panel per view
    (front: as seen by the addressee; side: from the signer's right), side by side, with the
    ``title`` above. The cameras are fixed for the whole clip: a 1.3 m square around the
    first frame's pelvis, from hip to above the head."""
    from .render import add_title

    for v in views:
        if v not in _VIEWS:
            raise ValueError(f"unknown view {v!r}; choose from {sorted(_VIEWS)}")
    verts = pose_vertices(model, smplx)
    J0 = model.rest_joints()[0] + (np.asarray(smplx["transl"], dtype=np.float64).reshape(-1, 3)[0] if "transl" in smplx else 0.0)
    centre = J0 + np.array([0.0, 0.35, 0.0])
    colour = np.array([200.0, 205.0, 220.0])
    frames = np.stack([np.concatenate([_rasterise(vt, model.faces, v, centre, 0.65, size, colour) for v in views], axis=1)
                       for vt in verts])
    return add_title(frames, title) if title else frames

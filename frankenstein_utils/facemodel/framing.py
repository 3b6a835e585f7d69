"""Framing and pose: photo landmarks to the render frame, eye geometry, head pose from landmarks, the sweep's pivot."""

from __future__ import annotations

import numpy as np
import torch

from ..render.rasterize import PoseJitter, RenderConfig
from .model import FaceModel

OUTER_EYE_CORNERS = (36, 45)  # iBUG 68-point scheme (0-based): the outer corners of the right and left eye
# The aligned CelebA photos are 89 x 109; this square box (left, top, right, bottom) centres the face.
CELEBA_CROP = (0.0, 20.0, 89.0, 109.0)
# MediaPipe FaceMesh landmark indices: eye corners (outer, inner) of each eye, nose tip.
MP_RIGHT_EYE = (33, 133)
MP_LEFT_EYE = (263, 362)
MP_NOSE_TIP = 1
# ICT-FaceKit eyeball vertex ranges (subject's left eyeball first; see the data README).
ICT_LEFT_EYEBALL = (21451, 23021)
ICT_RIGHT_EYEBALL = (23021, 24591)


def landmark_frame(landmarks: np.ndarray, crop, size: int) -> np.ndarray:
    """Landmarks (B, 468, 3) in photo pixels (y down, z smaller = nearer) -> output pixels with z larger = nearer."""
    left, top, right, bottom = crop
    s = size / (right - left)
    out = np.empty_like(landmarks, dtype=np.float32)
    out[..., 0] = (landmarks[..., 0] - left) * s
    out[..., 1] = (landmarks[..., 1] - top) * (size / (bottom - top))
    out[..., 2] = -landmarks[..., 2] * s
    return out


def eye_centres(lm: np.ndarray):
    """Centres of the subject's right and left eye (mean of the two corners), (B, 2) each, same frame as ``lm``."""
    r = lm[:, list(MP_RIGHT_EYE), :2].mean(1)
    l_ = lm[:, list(MP_LEFT_EYE), :2].mean(1)
    return r, l_


def ict_eye_geometry(model: FaceModel):
    """Inter-eye distance (cm) and eye midpoint (x, y) of the model's mean face, from the eyeball centres."""
    left = model.mean[ICT_LEFT_EYEBALL[0]:ICT_LEFT_EYEBALL[1]].mean(0)
    right = model.mean[ICT_RIGHT_EYEBALL[0]:ICT_RIGHT_EYEBALL[1]].mean(0)
    return float((left[:2] - right[:2]).norm()), ((left + right) / 2)[:2]


def matched_render_config(stats: dict, model: FaceModel, size: int, relative_span_cm: float = 12.0,
                          fg_floor: float = 0.1) -> RenderConfig:
    """A synthetic ``RenderConfig`` framed like the photos: same eye distance in pixels, eyes at the same place,
    region ending at the chin line, depth relative to the nearest point (as photo landmark depth must be)."""
    d_cm, mid = ict_eye_geometry(model)
    s = stats["eye_distance_px"] / d_cm  # pixels per cm
    ex, ey = stats["eye_mid_px"]
    x0 = float(mid[0]) - ex / s
    y1 = float(mid[1]) + ey / s
    window = (x0, x0 + size / s, y1 - size / s, y1)
    return RenderConfig(resolution=size, framing="fixed", window_cm=window, depth_mode="relative",
                        relative_span_cm=relative_span_cm, fg_floor=fg_floor, region="chin")


def rotation_to_angles(R: np.ndarray) -> np.ndarray:
    """(B, 3, 3) rotations R = Rz(roll) Ry(yaw) Rx(pitch) -> (B, 3) degrees (yaw, pitch, roll)."""
    yaw = np.arcsin(np.clip(-R[:, 2, 0], -1, 1))
    pitch = np.arctan2(R[:, 2, 1], R[:, 2, 2])
    roll = np.arctan2(R[:, 1, 0], R[:, 0, 0])
    return np.degrees(np.stack([yaw, pitch, roll], 1))


def estimate_poses(landmarks: np.ndarray) -> np.ndarray:
    """Head pose of each landmark set (B, 468, 3) in photo pixels, as pose vectors (yaw, pitch, roll, scale, tx, ty).

    Each face is aligned to the mean landmark shape made left-right symmetric (similarity Procrustes/Kabsch in a
    y-up, z-toward-viewer frame). Yaw and roll are therefore absolute (0 = symmetric frontal); pitch is relative to
    the average pitch of the photos. Scale is relative to the median face; tx, ty are eye-midpoint offsets from the
    median in units of the median inter-eye distance (multiply by the inter-eye distance in cm to get cm).
    """
    X = landmarks.astype(np.float64) * np.array([1.0, -1.0, -1.0])  # x right, y up, z toward the viewer
    c = X.mean(1, keepdims=True)
    Xc = X - c
    size = np.sqrt((Xc ** 2).sum((1, 2)))
    Xn = Xc / size[:, None, None]
    ref = Xn.mean(0)
    # Symmetrise: pair each point with the nearest point of the mirrored shape, average the two.
    mirror = ref * np.array([-1.0, 1.0, 1.0])
    pair = np.argmin(((ref[:, None, :] - mirror[None]) ** 2).sum(-1), axis=1)
    ref = (ref + mirror[pair]) / 2
    ref -= ref.mean(0)
    ref /= np.sqrt((ref ** 2).sum())
    H = np.einsum("ni,bnj->bij", ref, Xn)  # cross-covariance ref^T X (B, 3, 3)
    U, _, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(np.einsum("bij,bjk->bik", U, Vt)))
    D = np.zeros_like(H)
    D[:, 0, 0] = D[:, 1, 1] = 1
    D[:, 2, 2] = d
    R = np.einsum("bij,bjk,bkl->bil", Vt.transpose(0, 2, 1), D, U.transpose(0, 2, 1))  # X ~ R ref
    angles = rotation_to_angles(R)
    r, l_ = eye_centres(landmarks)
    eye_d = np.linalg.norm(l_ - r, axis=1)
    mid = (r + l_) / 2
    scale = size / np.median(size)
    shift = (mid - np.median(mid, 0)) / np.median(eye_d)
    shift[:, 1] *= -1  # y up, as model cm
    return np.concatenate([angles, scale[:, None], shift], 1).astype(np.float32)


def pose_jitter_from_poses(poses: np.ndarray, eye_distance_cm: float) -> PoseJitter:
    """A normal ``PoseJitter`` with the spread (std) of estimated real poses; shifts converted to cm."""
    std = poses.std(0)
    return PoseJitter(yaw_deg=float(std[0]), pitch_deg=float(std[1]), roll_deg=float(std[2]),
                      scale=float(std[3]), shift_cm=float(np.mean(std[4:6]) * eye_distance_cm),
                      distribution="normal")

NEUTRAL_POSE = (0.0, 0.0, 0.0, 1.0, 0.0, 0.0)  # yaw, pitch, roll (degrees), scale, shift x, shift y (cm)


def eye_pivot_shift(model, render, yaws, base_pose=NEUTRAL_POSE, coeffs=None) -> torch.Tensor:
    """Shift x (cm) that keeps the midpoint of the outer eye corners (iBUG 36, 45) of the face ``coeffs`` (default
    the mean face) where it is at yaw 0, for each yaw of ``yaws``: turning the head about the eyes, as the aligned
    training photos do. Exact for those two points: the shift is added after rotation and scale (``apply_pose``),
    and the fixed framing maps cm to px linearly."""
    from .appearance_render import model_landmarks

    yaws = torch.as_tensor(yaws, dtype=torch.float32).view(-1)
    poses = torch.tensor(base_pose, dtype=torch.float32).repeat(len(yaws) + 1, 1)
    poses[1:, 0] += yaws
    c = torch.zeros(len(poses), 1) if coeffs is None else torch.as_tensor(coeffs, dtype=torch.float32).expand(
        len(poses), -1)
    lm = model_landmarks(model, c, render, poses)
    mid_x = lm[:, list(OUTER_EYE_CORNERS), 0].mean(1)  # px
    cm_per_px = (render.window_cm[1] - render.window_cm[0]) / render.resolution
    return torch.as_tensor(-(mid_x[1:] - mid_x[0]) * cm_per_px, dtype=torch.float32)

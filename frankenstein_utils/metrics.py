"""Measurements of generated images.

Paired reconstruction quality (supervised stage): L1, PSNR and SSIM, over the whole image and inside the face mask,
computed with torchmetrics. Images in [-1, 1] are mapped to [0, 1] first; L1 is reported on the [-1, 1] scale.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


@torch.no_grad()
def paired_metrics(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict:
    """Per-image metrics, averaged: ``l1``, ``psnr``, ``ssim`` (whole image) and ``*_mask`` (inside the mask).

    pred, target: (N, C, H, W) in [-1, 1]; mask (N, 1, H, W) in {0, 1}. PSNR is per image on [0, 1] (data range 1);
    masked PSNR uses only the face pixels; masked SSIM averages the SSIM map over the face pixels."""
    p, t = (pred.float() + 1) / 2, (target.float() + 1) / 2
    m = mask.expand_as(p) > 0.5
    out = {"l1": [], "psnr": [], "ssim": [], "l1_mask": [], "psnr_mask": [], "ssim_mask": []}
    _, ssim_map = structural_similarity_index_measure(p, t, data_range=1.0, return_full_image=True,
                                                      reduction="none")
    for i in range(len(p)):
        out["l1"].append(float((pred[i] - target[i]).abs().mean()))
        out["psnr"].append(float(peak_signal_noise_ratio(p[i], t[i], data_range=1.0)))
        out["ssim"].append(float(ssim_map[i].mean()))
        mi = m[i]
        if mi.any():
            out["l1_mask"].append(float((pred[i] - target[i]).abs()[mi].mean()))
            out["psnr_mask"].append(float(peak_signal_noise_ratio(p[i][mi], t[i][mi], data_range=1.0)))
            out["ssim_mask"].append(float(ssim_map[i][mi].mean()))
    return {k: float(np.mean(v)) for k, v in out.items()}


@torch.no_grad()
def evaluate_paired(predict: Callable, images, depth, mask, batch_size: int = 256) -> dict:
    """``paired_metrics`` of ``predict(depth, mask, image) -> images`` over a whole split, in batches."""
    preds = torch.cat([predict(depth[s:s + batch_size], mask[s:s + batch_size], images[s:s + batch_size]).cpu()
                       for s in range(0, len(depth), batch_size)])
    return paired_metrics(preds, images, mask)


class MeanPhotoBaseline:
    """Predicts the mean training photo for every depth map."""

    def __init__(self, train_images: torch.Tensor):
        self.mean = train_images.float().mean(0, keepdim=True)

    def __call__(self, depth, mask=None, image=None):
        return self.mean.expand(len(depth), -1, -1, -1)


class LinearDepthBaseline:
    """Least-squares linear map of the depth value, per colour channel: image_c = a_c * depth + b_c."""

    def __init__(self, train_images: torch.Tensor, train_depth: torch.Tensor):
        X = torch.stack([train_depth.flatten().double(), torch.ones(train_depth.numel(), dtype=torch.float64)], 1)
        Y = train_images.double().permute(1, 0, 2, 3).reshape(train_images.shape[1], -1).T  # (pixels, C)
        self.coef = torch.linalg.lstsq(X, Y).solution.float()  # (2, C)

    def __call__(self, depth, mask=None, image=None):
        a, b = self.coef[0], self.coef[1]
        return (depth * a.view(1, -1, 1, 1) + b.view(1, -1, 1, 1)).clamp(-1, 1)

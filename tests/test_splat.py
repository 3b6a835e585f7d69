import numpy as np
import torch

from frankenstein_utils.render.rasterize import RenderConfig, rasterize_depth, to_pixels
from frankenstein_utils.render.splat import splat_depth


def test_original_method_agrees_with_zbuffer(face_model):
    cfg = RenderConfig()
    reg = face_model.region("face")
    c = face_model.sample_coefficients(3, generator=torch.Generator().manual_seed(0))
    px = to_pixels(face_model.vertices(c, "face"), cfg)
    z, mask = rasterize_depth(px, reg.faces, 128, 128, cull_backfaces=True)
    for i in range(3):
        d, m = splat_depth(px[i].numpy(), reg.faces.numpy(), 128, 128, rng=np.random.default_rng(i))
        both = m & mask[i].numpy()
        assert (m == mask[i].numpy()).mean() > 0.98
        # cm of depth; a 0.19 cm pixel on slopes up to ~45 degrees bounds the sub-pixel sampling difference
        assert np.abs(d[both] - z[i].numpy()[both]).mean() < 0.2

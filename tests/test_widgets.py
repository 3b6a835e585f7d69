import numpy as np
import torch

from frankenstein_utils.rasterize import RenderConfig
from frankenstein_utils.widgets import FaceExplorer


def test_sliders_rerender_the_face(face_model):
    ex = FaceExplorer(face_model, n_components=15, render=RenderConfig(resolution=64))
    box = ex.widget
    assert len(ex._sliders) == 15 and all(s.min == -3 and s.max == 3 for s in ex._sliders)
    before = ex._images[0].value
    ex._sliders[0].value = 2.5  # as a user moving the slider
    assert ex.coeffs[0, 0] == 2.5
    assert bytes(ex._images[0].value) != bytes(before) and bytes(ex._images[0].value).startswith(b"\x89PNG")
    expect = ex.render(torch.tensor([2.5] + [0.0] * 14))[0]
    np.testing.assert_array_equal(ex.render()[0], expect)
    assert ex.last_update_ms > 0 and "ms" in ex._timing.value
    ex.set_coeffs(torch.zeros(15))
    assert ex._sliders[0].value == 0 and ex.coeffs.abs().sum() == 0
    assert box is ex.widget


def test_panels_show_beside_the_depth(face_model):
    ex = FaceExplorer(face_model, n_components=3, render=RenderConfig(resolution=32),
                      panels=[lambda depth, mask: 1 - depth[0, 0]])
    ex.widget
    assert len(ex._images) == 2
    depth, inverted = ex.render()
    np.testing.assert_allclose(inverted.astype(int), 255 - depth.astype(int), atol=1)

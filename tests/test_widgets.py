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


def test_expression_sliders_rerender_the_face(face_model):
    ex = FaceExplorer(face_model, n_components=15, render=RenderConfig(resolution=64))
    ex.widget
    assert list(ex._expr_sliders) == face_model.expression_names  # every blendshape reachable
    assert all(s.min == 0 and s.max == 1 for s in ex._expr_sliders.values())
    shown = [s.description for s in ex._widget.children[0].children if hasattr(s, "description")]
    assert "jawOpen" in shown and "eyeLookUp_L" not in shown  # main ones in view, the rest in the accordion
    assert ex._expr_sliders["eyeLookUp_L"] in ex._expr_more.children[0].children
    before = bytes(ex._images[0].value)
    ex._expr_sliders["jawOpen"].value = 1.0  # as a user dragging the slider
    j = face_model.expression_index("jawOpen")
    assert ex.expressions[0, j] == 1.0 and bytes(ex._images[0].value) != before
    expect = torch.zeros(1, face_model.n_expressions)
    expect[0, j] = 1.0
    np.testing.assert_array_equal(ex.render()[0], ex.render(torch.zeros(15), expect)[0])
    assert not np.array_equal(ex.render()[0], ex.render(torch.zeros(15), torch.zeros(1, 53))[0])
    ex.set_coeffs(torch.zeros(15), torch.zeros(53))  # what the reset button does
    assert ex._expr_sliders["jawOpen"].value == 0 and ex.expressions.abs().sum() == 0


def test_images_keep_their_aspect_beside_the_slider_column(face_model):
    """The outer box must not stretch its children to the slider column's height (the browser saw 3.9-7x too tall
    images with the default align-items: stretch); ``shown`` gives what the widgets display."""
    ex = FaceExplorer(face_model, n_components=3, render=RenderConfig(resolution=32), display_scale=2,
                      panels=[lambda depth, mask: 1 - depth[0, 0]])
    assert ex.widget.layout.align_items == "flex-start"
    before = ex.shown()
    assert [a.shape for a in before] == [(64, 64), (64, 64)]
    np.testing.assert_array_equal(before[0][::2, ::2], ex.render()[0])  # nearest-neighbour upscale of the render
    ex.shape_sliders[0].value = 2.0  # as a user dragging the slider
    after = ex.shown()
    assert all((a != b).mean() > 0.02 for a, b in zip(before, after))
    np.testing.assert_array_equal(after[1][::2, ::2], ex.render()[1])

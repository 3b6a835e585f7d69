import numpy as np
import pytest
import torch

from frankenstein_utils.apps.widgets import AppearancePanel, FaceExplorer, appearance_labels
from frankenstein_utils.facemodel.appearance_render import appearance_coefficients, composite, render_face
from frankenstein_utils.io.images import to_uint8
from frankenstein_utils.render.rasterize import RenderConfig


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


# ---- the appearance panel ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app():
    from frankenstein_utils.facemodel.appearance import load_appearance

    return load_appearance()  # the shipped float16 model: no data needed


@pytest.fixture
def app_explorer(face_model, app):
    ex = FaceExplorer.with_appearance(face_model, n_appearance=8, app=app)
    ex.widget
    return ex


def expected_appearance(model, app, coeffs, appearance, expressions=None):
    """The appearance image as uint8 (H, W, 3), computed here from render_face and composite."""
    cfg = app.render_config()
    buf = render_face(model, app, coeffs.view(1, -1), appearance.view(1, -1), cfg, None, expressions)
    return to_uint8(((composite(buf["colour"], buf["mask"], app.background)[0] + 1) / 2).permute(1, 2, 0))


def test_appearance_explorer_renders_in_the_models_config(app_explorer, app):
    ex = app_explorer
    assert ex.cfg.to_dict() == app.render_config().to_dict()  # the photos' region and framing, 64 px
    panel = ex.appearance
    assert len(ex._images) == 2 and len(panel.sliders) == 8
    assert all(s.min == -3 and s.max == 3 and s.value == 0 for s in panel.sliders)
    assert [s.description for s in panel.sliders] == panel.names and panel.switch.value is False
    depth, face = ex.render()
    assert depth.shape == (64, 64) and face.shape == (64, 64, 3)
    np.testing.assert_array_equal(face, expected_appearance(ex.model, app, torch.zeros(15), torch.zeros(8)))
    column = ex.widget.children[0].children
    assert column.index(panel.switch) > column.index(ex._expr_more)  # beside the shape and expression sliders


def test_appearance_slider_changes_the_appearance_not_the_depth(app_explorer, app):
    ex = app_explorer
    before = ex.shown()
    ex.appearance.sliders[0].value = 2.0  # as a user dragging the slider
    after = ex.shown()
    np.testing.assert_array_equal(after[0], before[0])
    assert (after[1] != before[1]).any(-1).mean() > 0.2  # the face region and more: a0 is the skin tone
    a = torch.zeros(8)
    a[0] = 2.0
    np.testing.assert_array_equal(ex.render()[1], expected_appearance(ex.model, app, torch.zeros(15), a))


def test_appearance_from_shape_follows_the_shape_sliders(app_explorer, app, face_model):
    ex, panel = app_explorer, app_explorer.appearance
    c1, c2 = torch.zeros(1, 15), torch.zeros(1, 15)
    c2[0, 0] = 2.5
    panel.sliders[1].value = 1.5
    # Off: the sliders are the coefficients; the colour of every vertex is the same whatever the shape.
    np.testing.assert_array_equal(app.colours(panel.coefficients(c1)), app.colours(panel.coefficients(c2)))
    ex.shape_sliders[0].value = 2.5
    free = torch.tensor([0, 1.5, 0, 0, 0, 0, 0, 0.0])
    np.testing.assert_array_equal(ex.render()[1], expected_appearance(face_model, app, c2, free))
    # On: the sliders are the noise of the conditional given the current shape.
    panel.switch.value = True  # as a user ticking the box
    z = torch.zeros(1, app.n_components)
    z[0, 1] = 1.5
    want = appearance_coefficients(app, z, c2, "from-shape")
    np.testing.assert_array_equal(panel.coefficients(c2), want)
    np.testing.assert_array_equal(ex.render()[1], expected_appearance(face_model, app, c2, want))
    colours = [app.colours(panel.coefficients(c)) for c in (c1, c2)]
    assert (colours[0] - colours[1]).abs().mean() > 0.005  # the shape moved the colours themselves
    on_c2 = ex.shown()[1]
    ex.shape_sliders[0].value = 0.0
    np.testing.assert_array_equal(ex.render()[1], expected_appearance(
        face_model, app, c1, appearance_coefficients(app, z, c1, "from-shape")))
    assert (ex.shown()[1] != on_c2).any()


def test_panels_may_read_the_face_params(face_model):
    seen = []

    class Recorder:
        uses_face_params = True

        def __call__(self, depth, mask, params):
            seen.append(params)
            return depth[0, 0]

    ex = FaceExplorer(face_model, n_components=3, render=RenderConfig(resolution=32),
                      panels=[Recorder(), lambda depth, mask: depth[0, 0]])  # an old-style panel beside it
    ex.update(torch.tensor([1.0, 0, 0]))
    np.testing.assert_array_equal(seen[-1]["coeffs"], [[1.0, 0, 0]])
    assert seen[-1]["expressions"].shape == (1, face_model.n_expressions) and seen[-1]["poses"] is None


def test_appearance_slider_names_follow_the_measured_rule(face_model, app):
    """Names come from measuring each component's colour change, checked here with measures computed independently:
    skin ITA for "skin tone", left-minus-right lightness for "light left-right", mean b* for "warmth"."""
    from skimage.color import rgb2lab

    from frankenstein_utils.facemodel.appearance import individual_typology_angle, skin_vertices

    labels, measures = appearance_labels(face_model, app, 8)
    assert "skin tone" in labels and "light left-right" in labels  # this model's evident ones
    steps = torch.eye(8, app.n_components) * 2
    colours = app.colours(torch.cat([steps, -steps])).numpy()
    skin = skin_vertices(face_model, app.region_vertices.numpy())
    ita = individual_typology_angle(colours[:, skin].mean(1))
    d_ita = np.abs(ita[:8] - ita[8:])
    x = face_model.mean[app.region_vertices, 0].numpy()
    lab = rgb2lab(colours.astype(np.float64))
    side = lab[:, x < -2, 0].mean(1) - lab[:, x > 2, 0].mean(1)
    d_side = np.abs(side[:8] - side[8:])
    d_b = np.abs(lab[:8, :, 2].mean(1) - lab[8:, :, 2].mean(1))
    unnamed = [k for k in range(8) if labels[k] is None]
    assert unnamed, "every component named: the rule names nothing that is not dominant"
    for name, measure in (("skin tone", d_ita), ("light left-right", d_side), ("warmth", d_b)):
        for k in (k for k in range(8) if labels[k] == name):
            assert measure[k] > measure[unnamed].max(), (name, k, measure)
    assert all(max(m[p] for p in ("lightness", "colour", "left_right")) <= 0.5
               for m, lab_ in zip(measures, labels) if lab_ is None)


def test_appearance_labels_on_made_up_components(face_model, app):
    """The rule on components built to be one thing each: a uniform lightness change, a pure left-right gradient
    of lightness, a uniform yellowing, and per-vertex noise (nameless)."""
    from frankenstein_utils.facemodel.appearance import AppearanceConfig, AppearanceModel

    rv = app.region_vertices
    x = face_model.mean[rv, 0]
    V = len(rv)
    noise = torch.randn(V, 3, generator=torch.Generator().manual_seed(0))
    basis = torch.stack([torch.ones(V, 3), (x / x.abs().max())[:, None].expand(V, 3),
                         torch.tensor([1.0, 0.6, -1.0]).expand(V, 3), noise])
    basis = basis / basis.flatten(1).norm(dim=1)[:, None, None]
    mean = torch.tensor([0.7, 0.5, 0.4]).expand(V, 3)
    fake = AppearanceModel(mean, basis, torch.full((4,), 5.0), rv, AppearanceConfig(), {})
    labels, _ = appearance_labels(face_model, fake, 4)
    assert labels == ["skin tone", "light left-right", "warmth", None]


def test_reset_puts_appearance_sliders_back(app_explorer):
    ex = app_explorer
    start = ex.shown()
    ex.appearance.sliders[2].value = -2.0
    ex.shape_sliders[1].value = 1.0
    ex._reset.click()  # as a user clicking "reset"
    assert all(s.value == 0 for s in ex.appearance.sliders) and ex.appearance.values.abs().sum() == 0
    assert all(s.value == 0 for s in ex.shape_sliders)
    assert all(np.array_equal(a, b) for a, b in zip(ex.shown(), start))


def test_pretrained_explorer_with_the_appearance_render(face_model, app):
    from frankenstein_utils.pretrained import shipped as pretrained

    if "flagship" not in pretrained.available():
        pytest.skip("no shipped generator")
    ex = FaceExplorer.with_pretrained(face_model, "flagship", n_appearance=4, app=app)
    assert isinstance(ex.panels[0], AppearancePanel) and len(ex.render()) == 3  # depth, appearance, face
    assert ex.cfg.to_dict() == app.render_config().to_dict()

import numpy as np
import pytest
import torch

from frankenstein_utils.facemodel.model import FaceModel, read_obj, read_ply, write_ply


def test_npz_model_shapes(face_model):
    assert face_model.mean.shape == (26719, 3)
    assert face_model.basis.shape == (100, 26719, 3)
    assert face_model.faces.shape == (52220, 3)
    face = face_model.region("face")
    assert face.vertices.numel() == 19281 and face.faces.shape == (38052, 3)
    chin = face_model.region("chin")
    assert chin.vertices.numel() < face.vertices.numel()
    assert set(chin.vertices.tolist()) <= set(face.vertices.tolist())
    with pytest.raises(ValueError, match="unknown region"):
        face_model.region("ears")


def test_chin_region_removes_the_band_below_the_chin(face_model):
    face, chin = face_model.region("face"), face_model.region("chin")
    dropped = sorted(set(face.vertices.tolist()) - set(chin.vertices.tolist()))
    v = face_model.mean[dropped]
    assert len(dropped) > 100
    assert (v[:, 1] < -5).all()  # only below the mouth
    # the lowest kept vertex near the midline sits above the throat (which reaches y = -10.3 cm)
    kept = face_model.mean[chin.vertices]
    mid = kept[(kept[:, 0].abs() < 0.5) & (chin.vertices < 6706)]
    assert mid[:, 1].min() > -9.0


def test_obj_loader_on_original_files(face_model, ict_dir):
    v, f = read_obj(ict_dir / "generic_neutral_mesh.obj")
    assert v.shape == (26719, 3) and f.shape == (52220, 3)  # 25,836 quads + 548 triangles
    np.testing.assert_array_equal(v, face_model.mean.numpy())
    np.testing.assert_array_equal(f, face_model.faces.numpy())
    v1, _ = read_obj(ict_dir / "identity000.obj")
    np.testing.assert_allclose(v1 - v, face_model.basis[0].numpy(), atol=2e-6)


def test_model_from_obj_dir_matches_npz(face_model, ict_dir, tmp_path):
    for name in ("generic_neutral_mesh.obj", "identity000.obj"):
        (tmp_path / name).symlink_to(ict_dir / name)
    m = FaceModel.from_obj_dir(tmp_path)
    assert m.n_components == 1
    np.testing.assert_array_equal(m.basis[0].numpy(), face_model.basis[0].numpy())
    np.testing.assert_array_equal(m.mean.numpy(), face_model.mean.numpy())
    assert torch.equal(m.region("face").vertices, face_model.region("face").vertices)
    assert torch.equal(m.region("face").faces, face_model.region("face").faces)


def test_obj_errors_name_the_file(tmp_path):
    p = tmp_path / "bad.obj"
    p.write_text("v 0 0 0\nv 1 0 0\nf 1 2 7\n")
    with pytest.raises(ValueError, match="bad.obj.*out of range"):
        read_obj(p)
    p.write_text("# nothing\n")
    with pytest.raises(ValueError, match="bad.obj.*no vertices"):
        read_obj(p)


def test_sampling(face_model):
    g = lambda: torch.Generator().manual_seed(7)
    c = face_model.sample_coefficients(1000, 15, generator=g())
    assert c.shape == (1000, 15)
    assert torch.equal(c, face_model.sample_coefficients(1000, 15, generator=g()))
    assert abs(c.mean()) < 0.05 and abs(c.std() - 1) < 0.05
    t = face_model.sample_coefficients(5000, 15, generator=g(), truncation=1.5)
    assert t.abs().max() <= 1.5 and t.abs().max() > 1.45
    assert face_model.sample_coefficients(3, 100, generator=g()).shape == (3, 100)
    with pytest.raises(ValueError, match="K=101"):
        face_model.sample_coefficients(3, 101)


def test_vertices_are_the_linear_model(face_model):
    c = torch.randn(4, 15, generator=torch.Generator().manual_seed(0))
    v = face_model.vertices(c)
    expect = face_model.mean + torch.einsum("bk,knd->bnd", c, face_model.basis[:15])
    torch.testing.assert_close(v, expect, atol=1e-4, rtol=0)
    vr = face_model.vertices(c, "face")
    torch.testing.assert_close(vr, v[:, face_model.region("face").vertices])
    assert face_model.vertices(torch.zeros(3)).shape == (1, 26719, 3)  # any K, 1-D allowed


def test_ply_roundtrip(tmp_path, face_model):
    reg = face_model.region("face")
    v = face_model.vertices(torch.ones(1, 15), "face")[0].numpy()
    p = tmp_path / "face.ply"
    write_ply(p, v, reg.faces.numpy())
    assert p.read_bytes().startswith(b"ply\nformat binary_little_endian")
    v2, f2 = read_ply(p)
    np.testing.assert_array_equal(v2, v)
    np.testing.assert_array_equal(f2, reg.faces.numpy())


def _write_raw_ply(path, header_body: str, payload: bytes = b""):
    path.write_bytes(("ply\nformat binary_little_endian 1.0\n" + header_body + "end_header\n").encode() + payload)


@pytest.mark.parametrize("case,match", [
    ("no_face", "missing 'face' element"),
    ("no_vertex", "missing 'vertex' element"),
    ("int_coords", "property 'x' has type"),
    ("float_indices", "list of integers"),
    ("out_of_range", "out of range"),
    ("nan", "NaN"),
    ("garbage", "not a readable PLY"),
    ("truncated", "not a readable PLY"),
])
def test_ply_validation_names_file(tmp_path, case, match):
    p = tmp_path / f"{case}.ply"
    tri = np.array([[0, 1, 2]], np.int32)
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    if case == "no_face":
        _write_raw_ply(p, "element vertex 3\nproperty float x\nproperty float y\nproperty float z\n", v.tobytes())
    elif case == "no_vertex":
        _write_raw_ply(p, "element face 1\nproperty list uchar int vertex_indices\n", b"\x03" + tri.tobytes())
    elif case == "int_coords":
        _write_raw_ply(p, "element vertex 3\nproperty int x\nproperty int y\nproperty int z\n"
                          "element face 1\nproperty list uchar int vertex_indices\n",
                       v.astype(np.int32).tobytes() + b"\x03" + tri.tobytes())
    elif case == "float_indices":
        _write_raw_ply(p, "element vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
                          "element face 1\nproperty list uchar float vertex_indices\n",
                       v.tobytes() + b"\x03" + tri.astype(np.float32).tobytes())
    elif case in ("out_of_range", "nan"):  # files write_ply refuses to make: written raw
        if case == "out_of_range":
            tri = np.array([[0, 1, 5]], np.int32)
        else:
            v[1, 2] = np.nan
        _write_raw_ply(p, "element vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
                          "element face 1\nproperty list uchar int vertex_indices\n",
                       v.tobytes() + b"\x03" + tri.tobytes())
    elif case == "garbage":
        p.write_bytes(b"\x00\x01 not a ply at all")
    elif case == "truncated":
        write_ply(p, v, tri)
        p.write_bytes(p.read_bytes()[:-7])
    with pytest.raises(ValueError, match=match) as e:
        read_ply(p)
    assert p.name in str(e.value)


def test_expressions_add_blendshapes(face_model):
    from frankenstein_utils.facemodel.model import render_faces
    from frankenstein_utils.render.rasterize import RenderConfig, render_depth

    assert face_model.n_expressions == 53 and face_model.landmarks68.shape == (68,)
    c = torch.randn(2, 15, generator=torch.Generator().manual_seed(0))
    w = torch.zeros(2, 53)
    jaw = face_model.expression_index("jawOpen")
    w[0, jaw] = 1.0
    w[1, face_model.expression_index("mouthSmile_L")] = 0.5
    v = face_model.vertices(c, "full", w)
    expect = face_model.vertices(c, "full") + torch.einsum("be,enc->bnc", w, face_model.expression_basis)
    torch.testing.assert_close(v, expect, atol=1e-4, rtol=0)
    chin = face_model.landmarks68[8]
    assert v[0, chin, 1] < face_model.vertices(c[:1])[0, chin, 1] - 1.0  # jaw opens by more than 1 cm
    # region subsets agree with the full mesh
    idx = face_model.region("chin").vertices
    torch.testing.assert_close(face_model.vertices(c, "chin", w), v[:, idx], atol=1e-4, rtol=0)
    # neutral weights render exactly as render_depth; an open jaw changes the depth map
    cfg = RenderConfig(resolution=32)
    d0, m0 = render_depth(face_model, c, cfg)
    d1, m1 = render_faces(face_model, c, cfg, None, torch.zeros(2, 53))
    assert torch.equal(d0, d1) and torch.equal(m0, m1)
    d2, _ = render_faces(face_model, c, cfg, None, w)
    assert (d2[0] - d0[0]).abs().max() > 0.1
    with pytest.raises(ValueError, match="expressions must have shape"):
        face_model.vertices(c, "full", torch.zeros(2, 52))
    with pytest.raises(ValueError, match="unknown expression"):
        face_model.expression_index("frown")


def test_non_finite_inputs_are_refused_not_rendered_empty(face_model):
    """NaN/Inf coefficients, expressions or poses raise a clear ValueError (they used to give an empty map)."""
    from frankenstein_utils.facemodel.model import render_faces
    from frankenstein_utils.render.rasterize import RenderConfig, render_depth

    cfg = RenderConfig(resolution=16)
    c = torch.zeros(3, 15)
    c[2, 4] = float("nan")
    with pytest.raises(ValueError, match=r"identity coefficients hold NaN or Inf \(rows \[2\]\)"):
        render_depth(face_model, c, cfg)
    with pytest.raises(ValueError, match=r"expression weights hold NaN or Inf \(rows \[0, 1\]\)"):
        render_faces(face_model, torch.zeros(2, 15), cfg, None, torch.full((2, face_model.n_expressions), float("inf")))
    poses = torch.tensor([[0.0, 0, 0, 1, 0, 0]] * 2)  # yaw, pitch, roll, scale, shift x, y
    assert render_depth(face_model, torch.zeros(2, 15), cfg, poses)[1].all(0).any()  # finite ones still render
    poses[1, 0] = float("-inf")
    with pytest.raises(ValueError, match=r"poses hold NaN or Inf \(rows \[1\]\)"):
        render_depth(face_model, torch.zeros(2, 15), cfg, poses)
    with pytest.raises(ValueError, match="identity coefficients"):
        face_model.vertices(torch.full((15,), float("inf")))


def test_cli_prints_one_error_line_naming_the_file(tmp_path):
    """Expected errors (missing folder, unreadable OBJ, no identity files) give one ``error:`` line and exit 1; the
    traceback only with --debug."""
    import subprocess
    import sys

    def cli(folder, *extra):
        r = subprocess.run([sys.executable, "-m", "frankenstein_utils.facemodel.model", "--from-obj", str(folder), "--out",
                            str(tmp_path / "out.npz"), *extra], capture_output=True, text=True, timeout=120)
        return r.returncode, r.stderr.strip().splitlines()

    code, err = cli(tmp_path / "nope")
    assert code == 1 and len(err) == 1 and err[0].startswith("facemodel: error:")
    assert str(tmp_path / "nope" / "generic_neutral_mesh.obj") in err[0]
    neutral = tmp_path / "generic_neutral_mesh.obj"
    neutral.write_text("v 0 0 0\nv 1 0 x\nv 0 1 0\nf 1 2 3\n")
    code, err = cli(tmp_path)
    assert code == 1 and err == [f"facemodel: error: {neutral}:2: unreadable line 'v 1 0 x' "
                                 "(could not convert string to float: 'x')"]
    neutral.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    code, err = cli(tmp_path)
    assert code == 1 and len(err) == 1 and "no identityNNN.obj files" in err[0] and str(tmp_path) in err[0]
    code, err = cli(tmp_path, "--debug")
    assert code == 1 and err[0].startswith("Traceback") and err[-1].startswith("facemodel: error:")
    assert not (tmp_path / "out.npz").exists()

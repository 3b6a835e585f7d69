"""Issue 23, point 4: bad input that used to give silently wrong results now fails with one line naming the file and
the problem (or, on a resume, is redone)."""
import numpy as np
import pytest
from PIL import Image

from frankenstein_utils.depthdata import DepthMapDataset, generate_depth_dataset
from frankenstein_utils.fileio import atomic_savez, load_npz, png_header, save_png
from frankenstein_utils.rasterize import RenderConfig

RC = RenderConfig(resolution=16)


def test_resume_redoes_valid_pngs_of_another_mode_or_size(tmp_path, face_model):
    """A PNG that decodes but is not what the set writes (8-bit or palette depth, another size, an RGB or 16-bit
    mask) is rendered again on resume, not kept."""
    kw = dict(seed=3, render=RC, model=face_model, progress=False, device="cpu")
    ref = generate_depth_dataset(5, tmp_path / "ref", **kw)
    out = generate_depth_dataset(5, tmp_path / "out", **kw)
    save_png(out / "depth/000000.png", np.full((16, 16), 200, np.uint8))  # 8-bit depth
    save_png(out / "depth/000001.png", np.full((8, 8), 30000, np.uint16))  # another resolution
    Image.fromarray(np.zeros((16, 16), np.uint8)).convert("P").save(out / "depth/000002.png")  # palette
    save_png(out / "mask/000003.png", np.zeros((16, 16, 3), np.uint8))  # RGB mask
    save_png(out / "mask/000004.png", np.zeros((16, 16), np.uint16))  # 16-bit mask
    generate_depth_dataset(5, out, **kw)
    for sub in ("depth", "mask"):
        for i in range(5):
            name = f"{sub}/{i:06d}.png"
            assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    assert (png_header(out / "depth/000000.png").bit_depth, png_header(out / "mask/000003.png").colour_type) == (16, 0)


def test_resume_refuses_files_it_cannot_tie_to_the_configuration(tmp_path, face_model):
    """With meta.npz and config.json gone, the maps of another seed used to be kept (and the new seed's meta written
    over them); a config.json of another set without its meta.npz used to be overwritten."""
    kw = dict(render=RC, model=face_model, progress=False)
    old = generate_depth_dataset(3, tmp_path / "old", seed=1, **kw)
    (old / "meta.npz").unlink()
    (old / "config.json").unlink()
    with pytest.raises(ValueError, match=r"old: holds depth-set files \(depth/000000.png, \.\.\.\) but no meta.npz"):
        generate_depth_dataset(3, old, seed=2, **kw)
    assert not (old / "meta.npz").exists()
    other = generate_depth_dataset(3, tmp_path / "other", seed=1, **kw)
    (other / "meta.npz").unlink()
    with pytest.raises(ValueError, match=r"other/config.json: folder holds a set made with another configuration "
                                         r"\(differs in seed\)"):
        generate_depth_dataset(3, other, seed=2, **kw)
    # the same configuration's config.json ties the files to it: the resume goes on and restores meta.npz
    generate_depth_dataset(3, other, seed=1, **kw)
    assert len(DepthMapDataset(other)) == 3
    # a meta.npz without its readable copy: the copy is restored
    before = (other / "config.json").read_bytes()
    (other / "config.json").unlink()
    generate_depth_dataset(3, other, seed=1, **kw)
    assert (other / "config.json").read_bytes() == before


def test_dataset_refuses_a_meta_npz_that_does_not_match_its_maps(tmp_path, face_model):
    """Fewer coefficient rows than maps used to give a shorter set; a meta.npz of a smaller set copied over a bigger
    one, too."""
    kw = dict(render=RC, model=face_model, progress=False)
    root = generate_depth_dataset(4, tmp_path / "s", seed=0, **kw)
    meta = dict(load_npz(root / "meta.npz"))
    atomic_savez(root / "meta.npz", **{**meta, "coeffs": meta["coeffs"][:3]})
    with pytest.raises(ValueError, match=r"s/meta.npz: 3 coefficient rows for 4 depth maps"):
        DepthMapDataset(root)
    small = generate_depth_dataset(3, tmp_path / "small", seed=0, **kw)
    (root / "meta.npz").write_bytes((small / "meta.npz").read_bytes())
    with pytest.raises(ValueError, match=r"s/meta.npz: describes 3 faces but .*s/depth holds 4 depth maps"):
        DepthMapDataset(root)

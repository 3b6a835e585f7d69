import math

import pytest
import torch
from torch.utils.data import Dataset

from frankenstein_utils.apply import apply_folder
from frankenstein_utils.depthdata import generate_depth_dataset
from frankenstein_utils.rasterize import RenderConfig
from frankenstein_utils.training import (NonFiniteLossError, ResumableBatchSampler, TrainConfig, Trainer,
                                         load_run, supervised_config)


class ToyPairs(Dataset):
    """Depth = a random blob, image = a fixed colour function of depth: learnable from depth alone."""

    def __init__(self, n=64, size=16, poison=False):
        g = torch.Generator().manual_seed(0)
        yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        c = torch.rand(n, 2, generator=g) - 0.5
        r = torch.rand(n, generator=g) * 0.4 + 0.4
        d2 = (xx[None] - c[:, 0, None, None]) ** 2 + (yy[None] - c[:, 1, None, None]) ** 2
        self.depth = (1 - d2 / r[:, None, None] ** 2).clamp(0, 1)[:, None]
        self.mask = (self.depth > 0).float()
        self.image = torch.cat([self.depth * 2 - 1, 1 - self.depth * 2, self.depth.pow(2) * 2 - 1], 1)
        if poison:
            self.image[:] = float("nan")

    def __len__(self):
        return len(self.depth)

    def __getitem__(self, i):
        return {"image": self.image[i], "depth": self.depth[i], "mask": self.mask[i], "index": i}


def cfg(tmp_path, **kw):
    base = dict(image_size=16, width=8, batch_size=8, steps=6, lr=2e-3, out_dir=str(tmp_path), sample_every=3,
                checkpoint_every=3, log_every=1, encoder_width=8, z_dim=4)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("name", ["U", "V", "F", "NU", "cvae"])
def test_every_supervised_model_trains_and_reloads(tmp_path, name):
    c = supervised_config(name, **{k: v for k, v in vars(cfg(tmp_path)).items() if k not in ("mode", "generator")})
    t = Trainer(c, {"paired": ToyPairs()}, ToyPairs(8))
    hist = t.fit(progress=False)
    assert len(hist) == 6 and all(math.isfinite(v) for row in hist for k, v in row.items() if k != "step")
    assert (tmp_path / "samples" / "step_000003.png").exists()
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    run = load_run(tmp_path / "checkpoint.pt")
    assert run.step == 6 and run.cfg == TrainConfig.from_dict({**vars(c), "out_dir": str(tmp_path), "device": "cpu"})
    b = ToyPairs(4)
    out = run.generate(b.depth, b.mask, b.image)
    assert out.shape == (4, 3, 16, 16)


def test_loss_falls(tmp_path):
    t = Trainer(cfg(tmp_path, steps=60, checkpoint_every=0, sample_every=0), {"paired": ToyPairs(128)})
    h = [row["l1"] for row in t.fit(progress=False)]
    assert sum(h[-10:]) / 10 < 0.6 * sum(h[:10]) / 10


@pytest.mark.parametrize("mode", ["l1", "cvae"])
def test_resume_is_exact(tmp_path, mode):
    data = {"paired": ToyPairs()}
    full = Trainer(cfg(tmp_path / "full", mode=mode, steps=7), data)
    full.fit(progress=False)
    part = Trainer(cfg(tmp_path / "part", mode=mode, steps=3), data)
    part.fit(progress=False)
    resumed = Trainer(cfg(tmp_path / "part", mode=mode, steps=7), data)  # picks up checkpoint.pt at step 3
    assert resumed.step == 3
    resumed.fit(progress=False)
    assert resumed.history == full.history  # same losses, bit for bit
    for k in full.nets:
        for a, b in zip(full.nets[k].state_dict().values(), resumed.nets[k].state_dict().values()):
            assert torch.equal(a, b)


def test_nan_stops_with_clear_error_and_keeps_checkpoint(tmp_path):
    Trainer(cfg(tmp_path, steps=3), {"paired": ToyPairs()}).fit(progress=False)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    t = Trainer(cfg(tmp_path, steps=6), {"paired": ToyPairs(poison=True)})
    with pytest.raises(NonFiniteLossError, match=r"loss 'l1' = nan at step 4.*last good checkpoint kept"):
        t.fit(progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert load_run(tmp_path / "checkpoint.pt").step == 3


def test_config_checks(tmp_path):
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        TrainConfig.from_dict({"stpes": 3})
    with pytest.raises(ValueError, match="steps must be int"):
        TrainConfig.from_dict({"steps": "3"})
    with pytest.raises(ValueError, match="unknown mode"):
        TrainConfig(mode="diffusion")
    Trainer(cfg(tmp_path, steps=3), {"paired": ToyPairs()}).fit(progress=False)
    with pytest.raises(ValueError, match="another configuration"):
        Trainer(cfg(tmp_path, steps=3, width=16), {"paired": ToyPairs()})
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pt"):
        load_run(tmp_path / "junk.pt")


def test_batch_sampler_is_a_function_of_position():
    a = ResumableBatchSampler(10, 3, seed=1)
    it = iter(a)
    first = [next(it) for _ in range(7)]
    it2 = iter(ResumableBatchSampler(10, 3, seed=1, start=4))
    assert [next(it2) for _ in range(3)] == first[4:7]
    assert sorted(sum(first[:3], [])) == sorted(set(sum(first[:3], [])))  # no repeats within an epoch


def test_apply_command_on_a_folder(tmp_path, face_model):
    t = Trainer(cfg(tmp_path / "run", steps=2), {"paired": ToyPairs()})
    t.fit(progress=False)
    gen = generate_depth_dataset(3, tmp_path / "depthset", render=RenderConfig(resolution=16), model=face_model,
                                 progress=False)
    from frankenstein_utils.apply import main

    assert main(["--checkpoint", str(tmp_path / "run" / "checkpoint.pt"), "--input", str(gen / "depth"),
                 "--output", str(tmp_path / "faces")]) == 0
    from PIL import Image

    outs = sorted((tmp_path / "faces").glob("*.png"))
    assert [p.name for p in outs] == ["000000.png", "000001.png", "000002.png"]
    assert Image.open(outs[0]).size == (16, 16) and Image.open(outs[0]).mode == "RGB"
    big = generate_depth_dataset(1, tmp_path / "big", render=RenderConfig(resolution=32), model=face_model,
                                 progress=False)
    with pytest.raises(ValueError, match=r"000000.png: depth map is 32x32, the checkpoint expects 16x16"):
        apply_folder(tmp_path / "run" / "checkpoint.pt", big / "depth", tmp_path / "x", progress=False)

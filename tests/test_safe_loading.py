"""Loading a file never runs code inside it (issue 23, point 2). A pickle can run any code while it is read; a file
of this package is read without unpickling (``torch.load(weights_only=True)``: tensors and plain types only, or
safetensors), so a payload hidden inside an otherwise valid file is refused with one line naming the file, and
nothing runs. The payload here touches a marker file, standing for any code. Old files that need unpickling are
refused with the command that converts them (which reads them without running code either). Shipped weights are safetensors whose
SHA-256 is recorded and checked."""
import hashlib
import io
import json
import pathlib
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from frankenstein_utils.pretrained import shipped as P
from frankenstein_utils.train.config import TrainConfig
from frankenstein_utils.train.trainer import Trainer, load_run


class Touch:
    """Unpickling it creates ``path``: any code could run there instead."""

    def __init__(self, path):
        self.path = pathlib.Path(path)

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


class Pairs(Dataset):
    def __init__(self, n=16, size=16):
        g = torch.Generator().manual_seed(0)
        self.depth = torch.rand(n, 1, size, size, generator=g)
        self.mask = torch.ones(n, 1, size, size)
        self.image = self.depth.expand(-1, 3, -1, -1) * 2 - 1

    def __len__(self):
        return len(self.depth)

    def __getitem__(self, i):
        return {"image": self.image[i], "depth": self.depth[i], "mask": self.mask[i]}


def cfg(out, **kw):
    return TrainConfig(**{**dict(image_size=16, width=4, batch_size=4, steps=2, out_dir=str(out), sample_every=0,
                                 checkpoint_every=0, log_every=1, device="cpu"), **kw})


def refused(excinfo, path) -> str:
    """The error's text: one line that names ``path``."""
    msg = str(excinfo.value)
    assert "\n" not in msg.strip(), msg
    assert str(path) in msg, msg
    return msg


@pytest.fixture(scope="module")
def evil_checkpoint(tmp_path_factory):
    """A valid checkpoint of a tiny run with the payload hidden in its history."""
    d = tmp_path_factory.mktemp("evil")
    Trainer(cfg(d / "run"), {"paired": Pairs()}).fit(progress=False)
    ck = torch.load(d / "run" / "checkpoint.pt", weights_only=False)  # the test's own file
    ck["history"][0]["note"] = Touch(d / "marker")
    torch.save(ck, d / "evil.pt")
    return d / "evil.pt", d / "marker"


@pytest.mark.parametrize("how", ["load_run", "resume", "init_from"])
def test_checkpoint_with_code_inside_is_refused_and_nothing_runs(evil_checkpoint, tmp_path, how):
    evil, marker = evil_checkpoint
    path = evil
    with pytest.raises(ValueError) as e:
        if how == "load_run":
            load_run(evil)
        elif how == "resume":
            (tmp_path / "run").mkdir()
            path = tmp_path / "run" / "checkpoint.pt"
            shutil.copy(evil, path)
            Trainer(cfg(tmp_path / "run"), {"paired": Pairs()})
        else:
            Trainer(cfg(tmp_path / "ft", init_from=str(evil)), {"paired": Pairs()})
    msg = refused(e, path)
    assert "python -m frankenstein_utils.pretrained.convert" in msg
    assert not marker.exists()


def test_apply_with_a_checkpoint_with_code_inside_exits_1_in_one_line_and_nothing_runs(evil_checkpoint, tmp_path,
                                                                                         capsys):
    """``apply --checkpoint`` is the command-line path a downloaded checkpoint takes: refused with exit code 1 and
    one stderr line naming the file; the payload never runs and nothing is written."""
    from frankenstein_utils.apps.apply import main
    from frankenstein_utils.io.files import save_png

    evil, marker = evil_checkpoint
    (tmp_path / "in").mkdir()
    save_png(tmp_path / "in" / "000000.png", np.full((16, 16), 30000, np.uint16))
    rc = main(["--checkpoint", str(evil), "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert len(err.splitlines()) == 1 and err.startswith("apply: error: ") and str(evil) in err, err
    assert "python -m frankenstein_utils.pretrained.convert" in err
    assert not marker.exists()
    assert not list(tmp_path.glob("out/*.png"))


def test_old_checkpoint_is_refused_with_the_convert_command_and_resumes_exactly_once_converted(tmp_path, capsys):
    """A checkpoint as written before (numpy's RNG state pickled as an array): refused with the command; converted,
    it resumes exactly."""
    data = {"paired": Pairs()}
    full = Trainer(cfg(tmp_path / "full", steps=4), data)
    full.fit(progress=False)
    Trainer(cfg(tmp_path / "part", steps=2), data).fit(progress=False)
    ck_path = tmp_path / "part" / "checkpoint.pt"
    ck = torch.load(ck_path, weights_only=True)
    n = ck["rng"]["numpy"]
    ck["rng"]["numpy"] = ("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    torch.save(ck, ck_path)  # the old format
    with pytest.raises(ValueError) as e:
        Trainer(cfg(tmp_path / "part", steps=4), data)
    msg = refused(e, ck_path)
    assert f"python -m frankenstein_utils.pretrained.convert {ck_path} " in msg
    from frankenstein_utils.pretrained.convert import main

    assert main([str(ck_path), str(tmp_path / "new.pt")]) == 0
    assert capsys.readouterr().err == ""  # nothing to warn of: reading it runs nothing
    shutil.move(tmp_path / "new.pt", ck_path)
    rest = Trainer(cfg(tmp_path / "part", steps=4), data)
    assert rest.step == 2
    rest.fit(progress=False)
    assert rest.history == full.history
    for k in full.nets:
        assert all(torch.equal(a, b) for a, b in zip(full.nets[k].state_dict().values(),
                                                      rest.nets[k].state_dict().values()))


def old_shipped_blob(name="study/U", card_extra=None) -> dict:
    """A shipped model as the package wrote it before (a pickled dict, format 1)."""
    from dataclasses import asdict

    g = P.load_pretrained(name)
    half = lambda m: {k: (v.half() if v.is_floating_point() else v) for k, v in m.state_dict().items()}  # noqa: E731
    return {"format": 1, "config": {k: getattr(g.cfg, k) for k in P.BUILD_KEYS}, "G": half(g.nets["G"]),
            "E": half(g.nets["E"]) if "E" in g.nets else None, "render": g.render.to_dict(), "pose": asdict(g.pose),
            "card": {**g.card, **(card_extra or {})}, "latent": g.latent}


def test_shipped_pickle_is_refused_by_load_pretrained_and_converts(tmp_path, capsys, face_model):
    from frankenstein_utils.render.rasterize import render_depth

    marker = tmp_path / "marker"
    torch.save(old_shipped_blob(card_extra={"note": Touch(marker)}), tmp_path / "U.pt")
    with pytest.raises(ValueError) as e:
        P.load_pretrained(str(tmp_path / "U.pt"))
    assert "python -m frankenstein_utils.pretrained.convert" in refused(e, tmp_path / "U.pt")
    shutil.copy(tmp_path / "U.pt", tmp_path / "U.safetensors")  # a pickle under the new name
    with pytest.raises(ValueError) as e:
        P.load_pretrained(str(tmp_path / "U.safetensors"))
    refused(e, tmp_path / "U.safetensors")
    assert not marker.exists()
    # a clean old file (tensors and plain values) loads without unpickling, and converts: the same generator
    from frankenstein_utils.pretrained.convert import main

    torch.save(old_shipped_blob(), tmp_path / "clean.pt")
    assert main([str(tmp_path / "clean.pt"), str(tmp_path / "clean.safetensors")]) == 0
    assert capsys.readouterr().err == ""  # nothing to warn of: reading it runs nothing
    a, b = P.load_pretrained("study/U"), P.load_pretrained(str(tmp_path / "clean.safetensors"))
    c = P.load_pretrained(str(tmp_path / "clean.pt"))
    d, m = render_depth(face_model, torch.zeros(2, 15), a.render)
    d, m = d[:, None], m[:, None].float()
    assert torch.equal(a.generate(d, m), b.generate(d, m)) and torch.equal(a.generate(d, m), c.generate(d, m))
    assert b.card == a.card


def sha256(path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def test_shipped_weights_are_safetensors_with_recorded_checksums():
    from safetensors import safe_open

    W = P.WEIGHTS_DIR
    assert not list(W.rglob("*.pt"))
    files = sorted(p for p in W.rglob("*.safetensors") if p.name != "appearance.safetensors")
    names = sorted(p.relative_to(W).with_suffix("").as_posix() for p in files)
    # the depth-only flagship, the 24 study models and (once shipped) the buffers generator, the default
    assert "flagship" in names and len(names) == 25 + ("buffers" in names) and P.available() == names
    index = dict(line.split()[::-1] for line in (W / P.CHECKSUMS).read_text().splitlines())
    assert sorted(index) == sorted(p.relative_to(W).as_posix() for p in files)
    assert sum(p.stat().st_size for p in W.rglob("*") if p.is_file()) <= 20_000_000
    for p in files:
        digest = sha256(p)
        assert index[p.relative_to(W).as_posix()] == digest, p
        card = p.with_name(f"{p.stem}_MODEL_CARD.md").read_text()
        assert f"SHA-256 `{digest}`" in card, p
        with safe_open(p, "pt") as f:
            meta = f.metadata()
            assert all(f.get_tensor(k).dtype in (torch.float16, torch.int64) for k in f.keys() if k.startswith("G."))
        assert {"config", "render", "pose", "card"} <= set(meta) and json.loads(meta["card"])["step"] > 0


def test_a_bit_flipped_shipped_file_is_refused(tmp_path, monkeypatch):
    W = tmp_path / "weights"
    W.mkdir()
    shutil.copy(P.WEIGHTS_DIR / "flagship.safetensors", W)
    shutil.copy(P.WEIGHTS_DIR / P.CHECKSUMS, W)
    monkeypatch.setattr(P, "WEIGHTS_DIR", W)
    raw = bytearray((W / "flagship.safetensors").read_bytes())
    n = int.from_bytes(raw[:8], "little")
    entry = json.loads(raw[8:8 + n])["G.up.3.mod.z.weight"]
    w = P.read_shipped(W / "flagship.safetensors")["G"]["up.3.mod.z.weight"]
    at = 8 + n + entry["data_offsets"][0] + 2 * int(w.float().abs().argmax()) + 1  # its largest weight's high byte
    raw[at] ^= 0x40  # one bit: the float16 exponent's top bit, the weight times 2^16
    (W / "flagship.safetensors").write_bytes(bytes(raw))
    with pytest.raises(ValueError) as e:
        P.load_pretrained("flagship")
    assert "SHA-256" in refused(e, W / "flagship.safetensors")
    # what the check stops: the file still parses, with one weight blown up
    unchecked = P.read_shipped(W / "flagship.safetensors", verify=False)
    assert max(v.float().abs().max() for v in unchecked["G"].values()) > 1000


def test_update_card_records_the_new_checksum(tmp_path, monkeypatch, face_model):
    from frankenstein_utils.render.rasterize import render_depth

    W = tmp_path / "weights"
    (W / "study").mkdir(parents=True)
    for f in ("U.safetensors", "U_MODEL_CARD.md"):
        shutil.copy(P.WEIGHTS_DIR / "study" / f, W / "study")
    shutil.copy(P.WEIGHTS_DIR / P.CHECKSUMS, W)
    monkeypatch.setattr(P, "WEIGHTS_DIR", W)
    before = P.load_pretrained("study/U")
    P.update_card(W / "study" / "U.safetensors", note="rescored")
    digest = sha256(W / "study" / "U.safetensors")
    assert f"{digest}  study/U.safetensors" in (W / P.CHECKSUMS).read_text()
    assert f"SHA-256 `{digest}`" in (W / "study" / "U_MODEL_CARD.md").read_text()
    after = P.load_pretrained("study/U")
    assert after.card == {**before.card, "note": "rescored"}
    d, m = render_depth(face_model, torch.zeros(2, 15), before.render)
    assert torch.equal(before.generate(d[:, None], m[:, None].float()), after.generate(d[:, None], m[:, None].float()))


def test_replay_pool_with_code_inside_is_refused(tmp_path):
    from frankenstein_utils.train.replay import ReplayBuffer

    buf = ReplayBuffer(4, seed=1)
    buf.query(torch.rand(6, 1, 2, 2))
    prefix = tmp_path / "rank0.step00000002"
    buf.save(prefix)
    meta = torch.load(f"{prefix}.pt", weights_only=False)  # the test's own file
    meta["note"] = Touch(tmp_path / "marker")
    torch.save(meta, f"{prefix}.pt")
    with pytest.raises(ValueError) as e:
        ReplayBuffer(4).load(prefix)
    refused(e, f"{prefix}.pt")
    assert not (tmp_path / "marker").exists()


def test_metric_network_cache_loads_without_unpickling(tmp_path):
    from frankenstein_utils.evaluation import metric_nets as M

    real = torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    evil = tmp_path / "evil.pt"
    torch.save({"format": 1, "note": Touch(tmp_path / "marker")}, evil)
    with pytest.raises(ValueError) as e:
        M.train_feature_net(real, steps=2, batch_size=8, cache=evil)
    refused(e, evil)
    assert not (tmp_path / "marker").exists()
    net = M.train_feature_net(real, steps=2, batch_size=8, cache=tmp_path / "feat.pt")
    again = M.train_feature_net(real, steps=2, batch_size=8, cache=tmp_path / "feat.pt")
    torch.testing.assert_close(again(real), net(real))
    torch.load(tmp_path / "feat.pt", weights_only=True)  # tensors and plain types only


def old_checkpoint(tmp_path, payload=None, key=None):
    """A checkpoint as the package wrote it before safe loading: numpy's RNG state as a pickled tuple with an array,
    numpy numbers in the history, a path among the values; ``payload`` hidden in the history if given."""
    Trainer(cfg(tmp_path / "run", steps=2), {"paired": Pairs()}).fit(progress=False)
    path = tmp_path / "run" / "checkpoint.pt"
    ck = torch.load(path, weights_only=True)
    n = ck["rng"]["numpy"]
    key = n["key"].numpy().astype(np.uint32) if key is None else key
    ck["rng"]["numpy"] = ("MT19937", key, n["pos"], n["has_gauss"], n["cached_gaussian"])
    ck["history"][0]["loss_np"] = np.float64(0.25)
    ck["history"][0]["count_np"] = np.int64(3)
    ck["history"][0]["where"] = pathlib.Path("/data/run")
    if payload is not None:
        ck["history"][1]["note"] = payload
    torch.save(ck, path)
    return path


def test_converting_reads_the_old_format_without_unpickling_and_refuses_code_inside(tmp_path, capsys):
    """The converter itself never runs a file's code: it reads the older format's numpy arrays, numbers and paths
    with a weights-only load that allows only those, so a payload in an otherwise old-format checkpoint is refused
    with one line naming the file and nothing runs or is written; a clean one converts to plain values."""
    from frankenstein_utils.pretrained.convert import main
    from frankenstein_utils.train.checkpoint import read_checkpoint

    marker = tmp_path / "marker"
    evil = old_checkpoint(tmp_path / "e", payload=Touch(marker))
    assert main([str(evil), str(tmp_path / "evil_new.pt")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and str(evil) in err, err
    assert "builtins.getattr" in err, err  # names what it refused (the payload reaches Path.touch through getattr)
    assert not marker.exists()
    assert not (tmp_path / "evil_new.pt").exists()

    # numpy's own pickling entry points, steered: each is refused and nothing is written (numpy's constructor over
    # a buffer, bytes that do not fill the shape, an object array; with numpy itself they can read freed memory)
    class NdarrayOverBuffer:
        def __reduce__(self):
            return np.ndarray, ((4,), np.dtype("u1"), b"abcd")

    class ShortArray:
        def __reduce__(self):
            return (np.ndarray.__reduce__(np.zeros(1, np.uint8))[0], (np.ndarray, (0,), b"b"),
                    (1, (1 << 20,), np.dtype("u1"), False, b"ab"))

    for i, key in enumerate([NdarrayOverBuffer(), ShortArray(), np.array([1, "x"], dtype=object)]):
        bad = old_checkpoint(tmp_path / f"b{i}", key=key)  # where the converter reads numpy's RNG key
        assert main([str(bad), str(tmp_path / f"bad{i}.pt")]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and str(bad) in err, err
        assert not (tmp_path / f"bad{i}.pt").exists()

    clean = old_checkpoint(tmp_path / "c")
    assert main([str(clean), str(tmp_path / "new.pt")]) == 0
    ck = read_checkpoint(tmp_path / "new.pt")
    h = ck["history"][0]
    assert type(h["loss_np"]) is float and h["loss_np"] == 0.25
    assert type(h["count_np"]) is int and h["count_np"] == 3
    assert h["where"] == "/data/run"
    key = ck["rng"]["numpy"]["key"]
    assert key.dtype == torch.int64 and key.shape == (624,)
    # numpy 1 named its pickling helpers numpy.core..., numpy 2 numpy._core...: a file of the other one (torch's
    # legacy stream, so the path is a line)
    legacy = tmp_path / "numpy1.pt"
    buf = io.BytesIO()
    torch.save(torch.load(clean, weights_only=False), buf, _use_new_zipfile_serialization=False)  # the test's own file
    data = buf.getvalue()
    now, other = ((b"numpy._core.multiarray", b"numpy.core.multiarray") if b"numpy._core.multiarray" in data
                  else (b"numpy.core.multiarray", b"numpy._core.multiarray"))
    assert now in data
    legacy.write_bytes(data.replace(now, other))
    assert main([str(legacy), str(tmp_path / "from_numpy1.pt")]) == 0
    assert torch.equal(read_checkpoint(tmp_path / "from_numpy1.pt")["rng"]["numpy"]["key"], key)

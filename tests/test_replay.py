import pytest
import torch

from frankenstein_utils.train.replay import ReplayBuffer


def batches(n, k=8):
    return [torch.full((k, 1, 2, 2), float(i * k)) + torch.arange(k).view(k, 1, 1, 1) for i in range(n)]


def test_pass_through_when_off():
    buf = ReplayBuffer(0)
    x = torch.randn(4, 1, 2, 2)
    assert buf.query(x) is x


@pytest.mark.parametrize("memmap", [False, True])
def test_half_of_each_batch_comes_from_history(tmp_path, memmap):
    buf = ReplayBuffer(32, seed=1, memmap_path=str(tmp_path / "pool.npy") if memmap else None)
    bs = batches(200)
    old = 0
    total = 0
    for i, b in enumerate(bs):
        out = buf.query(b)
        assert out.shape == b.shape
        if i >= 4:  # pool full after 32 images
            from_pool = ~(out == b).flatten(1).all(1)
            old += int(from_pool.sum())
            total += len(b)
    assert 0.45 < old / total < 0.55
    assert buf.count == 32


def test_survives_resume(tmp_path):
    a = ReplayBuffer(16, seed=3)
    bs = batches(12, 4)
    for b in bs[:6]:
        a.query(b)
    state = a.state_dict()
    b_ = ReplayBuffer(16, seed=99, memmap_path=str(tmp_path / "p.npy"))
    b_.load_state_dict(state)
    for b in bs[6:]:
        assert torch.equal(a.query(b), b_.query(b))
    with pytest.raises(ValueError, match="size"):
        ReplayBuffer(8).load_state_dict(state)

import pytest
import torch

from frankenstein_utils.nets.layers import count_parameters, init_weights
from frankenstein_utils.nets.study import GENERATORS, AppearanceEncoder, Generator


@pytest.mark.parametrize("arch", GENERATORS)
@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("out_ch", [1, 3])
def test_generator_shapes(arch, size, out_ch):
    g = init_weights(Generator(arch, in_ch=2, out_ch=out_ch, width=8, norm="batch"))
    y = g(torch.rand(2, 2, size, size) * 2 - 1)
    assert y.shape == (2, out_ch, size, size)
    assert y.abs().max() <= 1  # tanh


def test_bad_sizes_and_names():
    with pytest.raises(ValueError, match="divisible by 4"):
        Generator("U", width=4)(torch.zeros(1, 1, 30, 30))
    with pytest.raises(ValueError, match="unknown generator"):
        Generator("W")
    with pytest.raises(ValueError, match="unknown normalisation"):
        Generator("U", norm="layer")
    with pytest.raises(ValueError, match="instance"):
        AppearanceEncoder(norm="instance")


def test_skips_carry_the_input_past_the_bottleneck():
    """With the bottleneck's output replaced by a constant, U still follows its input (through the skips), V does
    not: what the skips are for, tested by behaviour rather than by a parameter count."""
    x1, x2 = torch.rand(2, 1, 1, 16, 16) * 2 - 1
    for arch, follows in (("U", True), ("V", False)):
        g = init_weights(Generator(arch, width=8, norm="none")).eval()
        g.bottleneck2.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
        with torch.no_grad():
            assert ((g(x1) - g(x2)).abs().max() > 1e-4) == follows, arch


def test_skips_and_noise():
    u, v = Generator("U", width=8), Generator("V", width=8)
    assert count_parameters(u) > count_parameters(v)  # the skip merges take more input channels
    nu = init_weights(Generator("NU", width=8, z_dim=4)).eval()
    with torch.no_grad():
        for p in nu.film.parameters():
            p.normal_(0, 0.5)  # FiLM starts as the identity (z ignored) until trained
    x = torch.rand(1, 1, 32, 32)
    torch.manual_seed(0)
    a, b = nu(x), nu(x)  # fresh noise each call
    assert (a - b).abs().max() > 1e-4
    z = torch.randn(1, 4)
    torch.testing.assert_close(nu(x, z), nu(x, z))


def test_latent_changes_output_through_film():
    g = init_weights(Generator("U", width=8, z_dim=4, norm="instance")).eval()
    with torch.no_grad():
        for p in g.film.parameters():
            p.normal_(0, 0.5)  # FiLM starts as the identity; give it some weights
    x = torch.rand(1, 1, 32, 32)
    assert (g(x, torch.zeros(1, 4)) - g(x, torch.ones(1, 4))).abs().max() > 1e-3
    e = AppearanceEncoder(3, z_dim=6, width=8)
    mu, logvar = e(torch.rand(4, 3, 32, 32))
    assert mu.shape == logvar.shape == (4, 6)


def test_init_weights_reaches_spectral_norm_layers():
    """Under spectral norm a layer's ``weight`` is computed from ``parametrizations.weight.original``; writing into
    the computed tensor left the original at PyTorch's default init (issue 23)."""
    import torch.nn as nn

    sn = nn.utils.parametrizations.spectral_norm(nn.Conv2d(2, 2, 3))
    plain = nn.Conv2d(2, 2, 3)
    before = sn.parametrizations.weight.original.detach().clone()
    init_weights(nn.Sequential(sn, plain), gain=0.02)
    for w in (sn.parametrizations.weight.original, plain.weight):
        assert w.detach().abs().max() < 0.1  # N(0, 0.02); the default init here reaches ~0.2
    assert not torch.equal(before, sn.parametrizations.weight.original)

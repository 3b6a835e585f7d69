"""The peers' objectives: pix2pix (L1 + conditional PatchGAN) and BicycleGAN (cVAE-GAN + cLR-GAN)."""

from __future__ import annotations

import torch

from ..nets.flagship import MultiScaleDiscriminator, NLayerDiscriminator
from ..nets.layers import batch_stats_kept, init_weights
from ..nets.peers import ResNetEncoder, UNet
from .base import Objective, requires_grad
from .flagship_parts import multiscale_gan_loss
from .losses import kl_divergence, l1_loss, reparameterize


class Pix2PixObjective(Objective):
    init_all = False
    gan_loss = staticmethod(lambda c: "log")

    def networks(self):
        c = self.cfg
        return {"G": init_weights(UNet(c.in_channels, c.out_channels, c.width, c.image_size, "batch", True)),
                "D": init_weights(NLayerDiscriminator(c.in_channels + c.out_channels, c.d_width, 3, "batch"))}

    def step(self):
        c, t = self.cfg, self.t
        G, D = t.tn["G"], t.tn["D"]
        p = t._next("paired")
        x = self.gin(p)
        with t._autocast():  # forward passes and losses (--amp on CUDA)
            fake = G(x).float()
            # D: conditional, on (input, output) pairs; its loss halved (pix2pix: slows D relative to G)
            l_real = self.gan(D(torch.cat([x, p["image"]], 1)), True, True)
            l_fake = self.gan(D(torch.cat([x, fake.detach()], 1)), False, True)
        t._check({"d_real": l_real, "d_fake": l_fake})
        self._update(0.5 * (l_real + l_fake), ["D"])
        with t._autocast():
            adv = self.gan(D(torch.cat([x, fake], 1)), True, False)
            rec = l1_loss(fake, p["image"])
        t._check({"g_adv": adv, "l1": rec})
        self._update(adv + c.l1_weight * rec, ["G"], frozen=["D"])
        return {k: float(v.detach()) for k, v in {"d_real": l_real, "d_fake": l_fake, "g_adv": adv, "l1": rec}.items()}


class BicycleGANObjective(Objective):
    init_all = False
    gan_loss = staticmethod(lambda c: "lsgan")
    discriminators = ("D", "D2")

    def networks(self):
        c = self.cfg
        D = lambda: init_weights(MultiScaleDiscriminator(c.out_channels, c.d_width, 2, 3, "instance", False))
        return {"G": init_weights(UNet(c.in_channels, c.out_channels, c.width, c.image_size, "instance", False,
                                       c.z_dim)),
                "E": init_weights(ResNetEncoder(c.out_channels, c.z_dim, c.encoder_width, 4, "instance")),
                "D": D(), "D2": D()}

    def step(self):
        c, t = self.cfg, self.t
        G, E, D, D2 = (t.tn[k] for k in ("G", "E", "D", "D2"))
        p = t._next("paired")
        h = len(p["image"]) // 2
        x = self.gin(p)[:h]
        real_enc, real_rand = p["image"][:h], p["image"][h:2 * h]
        with t._autocast():  # forward passes and losses (--amp on CUDA)
            mu, logvar = (v.float() for v in E(real_enc))
            fake_enc = G(x, reparameterize(mu, logvar)).float()  # cVAE-GAN
            z_r = torch.randn(h, c.z_dim, device=t.device)
            fake_rand = G(x, z_r).float()  # cLR-GAN
            d = {}
            d["d_real"] = multiscale_gan_loss(self.gan, D(real_enc), True, True)
            d["d_fake"] = multiscale_gan_loss(self.gan, D(fake_enc.detach()), False, True)
            d["d2_real"] = multiscale_gan_loss(self.gan, D2(real_rand), True, True)
            d["d2_fake"] = multiscale_gan_loss(self.gan, D2(fake_rand.detach()), False, True)
        t._check(d)
        self._update(sum(d.values()), ["D", "D2"])
        with t._autocast():
            g = {"g_adv": multiscale_gan_loss(self.gan, D(fake_enc), True, False),
                 "g_adv2": multiscale_gan_loss(self.gan, D2(fake_rand), True, False),
                 "l1": l1_loss(fake_enc, real_enc), "kl": kl_divergence(mu, logvar)}
            Em = self.nets["E"]  # the raw module (DDP: see the flagship's step)
            requires_grad([Em], False)  # latent regression trains G alone
            with batch_stats_kept(Em):
                lat = l1_loss(Em(fake_rand)[0].float(), z_r)
            requires_grad([Em], True)
        t._check({**g, "latent": lat})
        loss = g["g_adv"] + g["g_adv2"] + c.l1_weight * g["l1"] + c.kl_weight * g["kl"] + c.latent_weight * lat
        self._update(loss, ["G", "E"], frozen=["D", "D2"])
        return {k: float(v.detach()) for k, v in {**d, **g, "latent": lat}.items()}

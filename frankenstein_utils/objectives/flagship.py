"""The flagship generator and the peers pix2pix and BicycleGAN: networks, objectives and training steps.

Three trainer modes live here (registered in ``OBJECTIVES``; ``train.trainer.Trainer`` delegates to them):

- ``flagship``: a deep encoder-decoder (bottleneck ``fs_bottleneck`` px, 4x4 at 64 px), resize-then-conv upsampling,
  every decoder level modulated by the appearance code z (AdaIN-style per-channel scale/shift) and by the depth map
  itself (SPADE, Park et al. 2019: per-pixel scale/shift from the resized input); a multi-scale PatchGAN with
  spectral normalisation; hinge or non-saturating loss with a lazy R1 penalty (Mescheder et al. 2018); DiffAugment
  (Zhao et al. 2020) on everything D sees; pix2pixHD feature matching on the paired branch; a BicycleGAN-style
  appearance encoder (cVAE branch on photo pairs, cLR branch with latent regression on *synthetic* face-model
  depth); an exponential moving average of G's weights, which is what ``generate`` uses.
  Every choice is a ``TrainConfig`` option (``fs_*``) so it can be ablated.
- ``pix2pix`` (Isola et al. 2017): U-Net with a skip per downsampling down to 1x1, batch norm, dropout 0.5 in the
  three innermost decoder blocks; conditional 70x70 PatchGAN (n_layers 3); vanilla GAN loss, lambda_L1 = 100, D loss
  halved, Adam(2e-4, 0.5). Paired data only, as in the paper.
- ``bicyclegan`` (Zhu et al. 2017): U-Net with z added to the input, ResNet encoder, two 2-scale PatchGANs (cVAE-GAN
  and cLR-GAN), LSGAN loss, lambda_L1 = 10, lambda_KL = 0.01, lambda_z = 0.5 (latent regression trains G alone),
  the batch split in halves between the two branches. Paired data only, as in the paper.

Deviations, stated: widths come from ``width``/``d_width``/``encoder_width`` (the papers use 64), batch size from the
config (the papers use 1-2), and ``generate`` runs the networks in eval mode (pix2pix keeps dropout and batch
statistics at test time).
"""

from __future__ import annotations

import copy

import torch

from ..nets.flagship import FlagshipGenerator, MultiScaleDiscriminator
from ..nets.layers import batch_stats_kept, init_weights
from ..nets.study import AppearanceEncoder
from .base import Objective, requires_grad
from .flagship_parts import diff_augment, ema_update, multiscale_gan_loss, paired_feature_matching, r1_penalty
from .losses import kl_divergence, l1_loss, reparameterize


class FlagshipObjective(Objective):
    init_all = False

    @staticmethod
    def gan_loss(c):
        return c.gan_loss

    def networks(self):
        c = self.cfg
        G = FlagshipGenerator(c.in_channels, c.out_channels, c.width, c.z_dim, c.image_size, c.fs_bottleneck,
                              c.fs_upsample, c.fs_modulation, c.fs_skips, c.fs_input_blur)
        nets = {"G": init_weights(G),
                "E": init_weights(AppearanceEncoder(c.out_channels, c.z_dim, c.encoder_width)),
                "D": init_weights(MultiScaleDiscriminator(c.out_channels, c.d_width, c.fs_scales, 3, "none",
                                                          c.spectral_norm))}
        if c.fs_ema > 0:
            nets["G_ema"] = copy.deepcopy(nets["G"]).requires_grad_(False)
        return nets

    def step(self):
        c, t = self.cfg, self.t
        G, E, D = t.tn["G"], t.tn["E"], t.tn["D"]
        p, s, r = t._next("paired"), t._next("synthetic"), t._next("real")
        aug = lambda x: diff_augment(x, c.fs_diffaug)
        # forward passes and losses under bf16 autocast (--amp, on CUDA); backward and steps outside it
        with t._autocast():
            # one generator pass: cVAE branch (z = E(photo)) on pairs, cLR branch (z ~ N(0, I)) on face-model depth
            mu, logvar = (v.float() for v in E(p["image"]))
            fake_p = G(self.gin(p), reparameterize(mu, logvar)).float()
            z_r = torch.randn(len(s["depth"]), c.z_dim, device=t.device)
            fake_s = G(self.gin(s), z_r).float()
            fake = torch.cat([fake_p, fake_s])
            real = torch.cat([p["image"], r["image"]])
            # D step
            d_real, d_fake = D(aug(real)), D(aug(fake.detach()))
            l_real = multiscale_gan_loss(self.gan, d_real, True, True)
            l_fake = multiscale_gan_loss(self.gan, d_fake, False, True)
            d_loss, log = l_real + l_fake, {"d_real": l_real, "d_fake": l_fake}
            if c.fs_r1 > 0 and t.step % c.fs_r1_every == 0:  # lazy R1 (StyleGAN2): every k steps, k times the weight
                with torch.autocast(t.device.type, enabled=False):  # a double backward: float32 (amp or not)
                    r1 = r1_penalty(D, aug(real))
                d_loss = d_loss + c.fs_r1 / 2 * c.fs_r1_every * r1
                log["r1"] = r1
        t._check(log)
        self._update(d_loss, ["D"])
        # G (and E) step
        Dm = self.nets["D"]  # features() bypasses DDP; D is frozen in this step
        with t._autocast():
            adv = multiscale_gan_loss(self.gan, D(aug(fake)), True, False)
            terms = {"g_adv": (c.gan_weight, adv), "l1": (c.l1_weight, l1_loss(fake_p, p["image"])),
                     "kl": (c.kl_weight, kl_divergence(mu, logvar))}
            if c.feature_matching > 0:  # pix2pixHD: the fake's D features vs its own photo's, on the paired half
                f_real, _ = Dm.features(p["image"])
                f_fake, _ = Dm.features(fake_p)
                terms["feature_matching"] = (c.feature_matching, paired_feature_matching(f_real, f_fake))
            if c.latent_weight > 0:  # BicycleGAN latent regression E(G(x, z)) = z on synthetic depth; trains G alone
                # the raw module: under DDP a second call of the wrapped, frozen E would wait for its gradients; its
                # BatchNorm statistics stay those of photos
                Em = self.nets["E"]
                requires_grad([Em], False)
                with batch_stats_kept(Em):
                    terms["latent"] = (c.latent_weight, l1_loss(Em(fake_s)[0].float(), z_r))
                requires_grad([Em], True)
        t._check({k: v for k, (w, v) in terms.items()})
        self._update(sum(w * v for w, v in terms.values()), ["G", "E"], frozen=["D"])
        if "G_ema" in self.nets:
            # warm-up (as in StyleGAN2-ADA's ramp): early on the average must follow the fast-changing weights; a run
            # started from another (--init-from) counts that run's steps, its average being already settled
            seen = t.step + sum(h.get("source_step", 0) for h in t.config_history if "init_from" in h)
            decay = min(c.fs_ema, (1 + seen) / (10 + seen))
            ema_update(self.nets["G_ema"], self.nets["G"], decay)
        log.update({k: v for k, (w, v) in terms.items()})
        return {k: float(v.detach()) for k, v in log.items()}

"""The 2017 study's objectives, one small class each: L1, cVAE, GAN, GAN+recon, L1+GAN, cVAE-GAN, cross-encoder.

The study's training objectives, one small class each: its networks, its losses and its step (as
pytorch-CycleGAN-and-pix2pix's ``models/`` and labml's experiments). The ``Trainer`` (train/trainer.py) keeps what every
mode shares: the loop, data streams, checkpoints, resume, logging, the NaN guard, DDP and the replay pools.

An objective is built with its trainer ``t`` and uses from it: ``t._next(stream)`` (the next batch), ``t.tn`` (the
modules to call: DDP-wrapped when distributed), ``t.opts``, ``t._check`` (NaN guard), ``t.replay``, ``t.step``,
``t._mean_over_processes``. Checkpoints keep the networks under the same names as before (``G``, ``E``, ``D``,
``R``, ``DecP``, ``DecD``), so runs made before this split load unchanged.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..nets.layers import batch_stats_kept
from ..nets.study import AppearanceEncoder, ConvDecoder, ConvEncoder, EncoderDecoder, Generator, define_discriminator
from .base import Objective, generator_input
from .losses import (GANLoss, bottleneck_kl, clip_weights, feature_matching_loss, gradient_penalty, kl_divergence,
                     l1_loss, reparameterize, wgan_critic_steps)


# ---- supervised ------------------------------------------------------------------------------------------------------
class L1Objective(Objective):
    """``l1``: min_G || G(depth) - photo ||_1 on paired data (inside the dilated face mask if ``masked_l1``)."""

    def networks(self):
        return {"G": self.generator(self.cfg.z_dim if self.cfg.generator == "NU" else 0)}

    def step(self):
        t = self.t
        b = t._next("paired")
        G, opt = t.tn["G"], t.opts["G"]
        with t._autocast():
            fake = G(self.gin(b))
            loss = l1_loss(fake.float(), b["image"], self.loss_mask(b["mask"]))
        opt.zero_grad(set_to_none=True)
        t._check({"l1": loss})
        loss.backward()
        opt.step()
        return {"l1": loss.item()}


class CVAEObjective(Objective):
    """``cvae``: z = E(photo) ~ N(mu, sigma^2);
    min_{G,E} l1_weight ||G(depth, z) - photo||_1 + kl_weight KL(q(z) || N(0, I))."""

    def networks(self):
        c = self.cfg
        return {"G": self.generator(c.z_dim), "E": AppearanceEncoder(c.out_channels, c.z_dim, c.encoder_width)}

    def step(self):
        t, c = self.t, self.cfg
        b = t._next("paired")
        G, E = t.tn["G"], t.tn["E"]
        with t._autocast():
            mu, logvar = E(b["image"])
            z = reparameterize(mu.float(), logvar.float())
            fake = G(self.gin(b), z)
            rec = l1_loss(fake.float(), b["image"], self.loss_mask(b["mask"]))
            kl = kl_divergence(mu.float(), logvar.float())
            loss = c.l1_weight * rec + c.kl_weight * kl
        for o in (t.opts["G"], t.opts["E"]):
            o.zero_grad(set_to_none=True)
        t._check({"l1": rec, "kl": kl})
        loss.backward()
        t.opts["G"].step()
        t.opts["E"].step()
        return {"l1": rec.item(), "kl": kl.item()}


# ---- adversarial -----------------------------------------------------------------------------------------------------
class AdversarialObjective(Objective):
    """Synthetic depth -> image against real photos with ``GANLoss(gan_loss)`` (wgan-gp: the WGAN loss plus
    ``gradient_penalty``; wgan: weight clipping), optional experience replay (``t.replay``), feature matching,
    bottleneck KL, and one of two D/G schedules: ``n_critic`` D steps per G step (the WGAN critic schedule for wgan),
    or ``adaptive``, the original's. Subclasses say what the generator produces (``generator_pass``)."""

    streams = ("synthetic", "real")

    def __init__(self, trainer):
        super().__init__(trainer)
        c = self.cfg
        self.gan = GANLoss("wgan" if c.gan_loss == "wgan-gp" else c.gan_loss)
        self.margin = 0.0  # adaptive schedule: D(real) - D(fake) as measured by the last D pass

    def networks(self):
        c = self.cfg
        return {**self.generators(), "D": define_discriminator(c.discriminator, c.out_channels, c.d_width,
                                                                c.image_size, c.spectral_norm, c.d_norm)}

    def generators(self) -> dict:
        return {"G": self.generator(self.cfg.z_dim if self.cfg.generator == "NU" else 0)}

    def generator_pass(self, b: dict):
        """Fakes to show D (B', C, H, W) and the generator's other loss terms {name: (weight, value)}; also the
        bottleneck of the synthetic pass (for ``bottleneck_kl``)."""
        fake, bott = self.t.tn["G"](self.gin(b["synthetic"]), return_bottleneck=True)
        return fake, {}, bott

    def state(self):
        return {"margin": self.margin}

    def load_state(self, ck):
        self.margin = ck.get("margin", 0.0)

    # the pieces of a step
    def batches(self) -> dict:
        return {name: self.t._next(name) for name in self.streams}

    def fakes(self, b):
        fake, terms, bott = self.generator_pass(b)
        if self.cfg.bottleneck_kl > 0:
            terms["bottleneck_kl"] = (self.cfg.bottleneck_kl, bottleneck_kl(bott.float()))
        return fake, terms

    def d_inputs(self, b: dict, fake: torch.Tensor, k: int):
        """Batches and fakes for the k-th D step of an iteration: the iteration's own first, fresh ones after."""
        if k == 0:
            return b, fake.detach()
        bk = self.batches()
        with torch.no_grad(), self.t._autocast():
            fk, _ = self.fakes(bk)
        return bk, fk

    def _local_margin(self, d_real, d_fake) -> torch.Tensor:
        """Mean D(real) - D(fake) on this process's batch, as probabilities for the log loss, raw scores otherwise."""
        if self.cfg.gan_loss == "log":
            d_real, d_fake = torch.sigmoid(d_real), torch.sigmoid(d_fake)
        return (d_real.detach().float().mean() - d_fake.detach().float().mean()).reshape(1)

    def measure_margin(self, d_real, d_fake) -> float:
        """The margin averaged over all processes: every process must take the same number of D steps."""
        return float(self.t._mean_over_processes(self._local_margin(d_real, d_fake)))

    def d_step(self, b, fake) -> dict:
        c, t = self.cfg, self.t
        D, opt = t.tn["D"], t.opts["D"]
        real = b["real"]["image"]
        fake = t.replay.query(fake.detach())
        with t._autocast():
            d_real, d_fake = D(real), D(fake)
            if c.adaptive:  # measured before this update, as the original fetched it with the training op
                self.margin = self.measure_margin(d_real, d_fake)
            l_real, l_fake = self.gan(d_real, True, True), self.gan(d_fake, False, True)
            loss = l_real + l_fake
            out = {"d_real": l_real, "d_fake": l_fake}
            if c.gan_loss == "wgan-gp":
                gp = gradient_penalty(D, real, fake)
                loss = loss + c.gp_weight * gp
                out["gp"] = gp
        t._check(out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if c.gan_loss == "wgan":
            clip_weights(D, c.wgan_clip)
        return {k: float(v.detach()) for k, v in out.items()}

    def step(self):
        c, t = self.cfg, self.t
        b = self.batches()
        log = {}
        # One generator pass serves both steps: D sees its output detached, G's step reuses it with its graph (G's
        # parameters do not change during D's steps).
        with t._autocast():
            fake, terms = self.fakes(b)
        n_d = 0
        if c.adaptive:
            # The original schedule (dvg13/image-model, basic_gan). With m = D(real) - D(fake) as measured by the
            # last D pass: no D step if m >= high; else one, repeated while m < low (at most adaptive_max_d). Then
            # one G step.
            while self.margin < c.adaptive_high and (n_d == 0 or self.margin < c.adaptive_low) \
                    and n_d < c.adaptive_max_d:
                log.update(self.d_step(*self.d_inputs(b, fake, n_d)))
                n_d += 1
        else:
            n_d = c.n_critic
            if c.gan_loss in ("wgan", "wgan-gp") and c.wgan_burst:
                n_d = wgan_critic_steps(t.step, c.n_critic, c.wgan_burst, c.wgan_burst_until, c.wgan_burst_every)
            for k in range(n_d):
                log.update(self.d_step(*self.d_inputs(b, fake, k)))
        # G step. The raw D, frozen before its forward (CycleGAN's set_requires_grad): no gradients land in D, and
        # under DDP no wrapped module waits for gradients that never come.
        Dm = self.nets["D"]
        Dm.requires_grad_(False)
        with t._autocast():
            if c.feature_matching > 0:
                real_feats, _ = Dm.features(b["real"]["image"])
                fake_feats, d_fake = Dm.features(fake)
                terms["feature_matching"] = (c.feature_matching, feature_matching_loss(real_feats, fake_feats))
            else:
                d_fake = Dm(fake)
            adv = self.gan(d_fake, True, for_d=False)
            loss = c.gan_weight * adv + sum(w * v for w, v in terms.values())
        try:
            t._check({"g_adv": adv, **{k: v for k, (w, v) in terms.items()}})
            names = [n for n in ("G", "E", "R") if n in t.opts]
            for n in names:
                t.opts[n].zero_grad(set_to_none=True)
            loss.backward()
        finally:
            Dm.requires_grad_(True)
        for n in names:
            t.opts[n].step()
        if c.adaptive and n_d == 0:  # no D pass measured the margin: measure it now without training (as the original)
            with torch.no_grad(), t._autocast():
                fk, _ = self.fakes(b)
                self.margin = self.measure_margin(t.tn["D"](b["real"]["image"]), t.tn["D"](fk))
        log["g_adv"] = float(adv.detach())
        log.update({k: float(v.detach()) for k, (w, v) in terms.items()})
        log["d_steps"] = float(n_d)
        if c.adaptive:
            log["margin"] = self.margin
        return log


class GANObjective(AdversarialObjective):
    """``gan``: min_G max_D of the adversarial loss, G(synthetic depth) against real photos."""


class GANReconObjective(AdversarialObjective):
    """``gan+recon``: plus a net R mapping the generated image back to its depth, recon_weight ||R(G(d)) - d||_1;
    ``full_cycle`` adds photo -> R -> G -> photo with the same weight."""

    def networks(self):
        c = self.cfg
        return {**super().networks(), "R": Generator("U", c.out_channels, 1, c.width, c.norm)}

    def generator_pass(self, b):
        c, t = self.cfg, self.t
        G, R, syn = t.tn["G"], t.tn["R"], b["synthetic"]
        fake, bott = G(self.gin(syn), return_bottleneck=True)
        terms = {"recon": (c.recon_weight, l1_loss(R(fake).float(), syn["depth"] * 2 - 1))}
        if c.full_cycle:  # photo -> R -> depth -> G -> photo
            real = b["real"]["image"]
            d_hat = (R(real) + 1) / 2
            back = G(generator_input(d_hat, (d_hat > 0.05).float(), c.mask_input))
            terms["cycle"] = (c.recon_weight, l1_loss(back.float(), real))
        return fake, terms, bott


class L1GANObjective(AdversarialObjective):
    """``l1+gan``: L1 on paired data plus the adversarial loss on outputs from paired AND synthetic depth."""

    streams = ("paired", "synthetic", "real")

    def generator_pass(self, b):
        c, G, p = self.cfg, self.t.tn["G"], b["paired"]
        fake_p = G(self.gin(p))
        terms = {"l1": (c.l1_weight, l1_loss(fake_p.float(), p["image"], self.loss_mask(p["mask"])))}
        fake_s, bott = G(self.gin(b["synthetic"]), return_bottleneck=True)
        return torch.cat([fake_p, fake_s]), terms, bott


class CVAEGANObjective(AdversarialObjective):
    """``cvae-gan`` (BicycleGAN-style): the cvae objective on pairs, the adversarial loss on E-coded and
    prior-sampled outputs, and latent regression ||E(G(d, z)) - z||_1 for z ~ N(0, I) (training G only)."""

    streams = ("paired", "synthetic", "real")

    def generators(self):
        c = self.cfg
        return {"G": self.generator(c.z_dim), "E": AppearanceEncoder(c.out_channels, c.z_dim, c.encoder_width)}

    def generator_pass(self, b):
        c, t = self.cfg, self.t
        G, E, p, syn = t.tn["G"], t.tn["E"], b["paired"], b["synthetic"]
        mu, logvar = E(p["image"])
        fake_p = G(self.gin(p), reparameterize(mu.float(), logvar.float()))
        terms = {"l1": (c.l1_weight, l1_loss(fake_p.float(), p["image"], self.loss_mask(p["mask"]))),
                 "kl": (c.kl_weight, kl_divergence(mu.float(), logvar.float()))}
        z_r = torch.randn(len(syn["depth"]), c.z_dim, device=t.device)
        fake_s, bott = G(self.gin(syn), z_r, return_bottleneck=True)
        Em = self.nets["E"]  # the raw module: under DDP a frozen wrapped module would wait for gradients
        Em.requires_grad_(False)  # latent regression trains G only (BicycleGAN)
        with batch_stats_kept(Em):  # E's BatchNorm statistics stay those of photos
            terms["latent"] = (c.latent_weight, l1_loss(Em(fake_s)[0].float(), z_r))
        Em.requires_grad_(True)
        return torch.cat([fake_p, fake_s]), terms, bott


class CrossEncoderObjective(AdversarialObjective):
    """``cross-encoder``: a shared encoder with two decoders (photos, depth) is pre-trained as two autoencoders and
    frozen; the generator is the frozen encoder + a trainable photo decoder (started from the pre-trained one),
    adversarial loss plus code_weight ||enc(G(d)) - enc(d)||_1."""

    def __init__(self, trainer):
        if trainer.cfg.mask_input:
            raise ValueError("cross-encoder: the shared encoder takes depth or photo alone (mask_input=False)")
        super().__init__(trainer)
        self.nets["G"].enc.requires_grad_(False)  # trained only in pre-training (through DecP / DecD)
        self.pretrained = False

    def generators(self):
        c = self.cfg
        enc = ConvEncoder(c.out_channels, c.width, c.norm)
        return {"G": EncoderDecoder(enc, ConvDecoder(c.out_channels, c.width, c.norm), c.out_channels),
                "DecP": ConvDecoder(c.out_channels, c.width, c.norm), "DecD": ConvDecoder(1, c.width, c.norm)}

    def parameters_of(self, name):
        return list(self.nets["G"].dec.parameters()) if name == "G" else super().parameters_of(name)

    def generator_pass(self, b):
        c, syn = self.cfg, b["synthetic"]
        fake, bott = self.t.tn["G"](self.gin(syn), return_bottleneck=True)
        enc, Gm = self.nets["G"].enc, self.nets["G"]
        code_in = enc(Gm.as_image(self.gin(syn))).detach()
        return fake, {"code": (c.code_weight, l1_loss(enc(fake).float(), code_in.float()))}, bott

    def state(self):
        return {**super().state(), "pretrained": self.pretrained}

    def load_state(self, ck):
        super().load_state(ck)
        self.pretrained = ck.get("pretrained", False)

    def pretrain(self, progress: bool):
        """The shared encoder, photo decoder and depth decoder as two autoencoders; then the encoder is frozen and
        the generator's decoder starts from the photo decoder."""
        c, t, G = self.cfg, self.t, self.nets["G"]
        enc = G.enc
        enc.requires_grad_(True)
        params = list(enc.parameters()) + list(self.nets["DecP"].parameters()) + list(self.nets["DecD"].parameters())
        opt = torch.optim.Adam(params, lr=c.lr, betas=(c.beta1, c.beta2))
        if t.world > 1:  # before DDP wraps anything: every process starts from rank 0's weights
            import torch.distributed as dist

            for p in params:
                dist.broadcast(p.data, 0)
        for _ in tqdm(range(c.pretrain_steps), desc="cross-encoder pre-training", disable=not progress):
            real = t._next("real")["image"]
            d = t._next("synthetic")["depth"] * 2 - 1
            with t._autocast():
                rec_p = l1_loss(self.nets["DecP"](enc(real)).float(), real)
                rec_d = l1_loss(self.nets["DecD"](enc(G.as_image(d))).float(), d)
                loss = rec_p + rec_d
            t._check({"pretrain_photo": rec_p, "pretrain_depth": rec_d})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if t.world > 1:  # each process saw its slice of the batch: average the gradients, as DDP would
                for p in params:
                    if p.grad is not None:
                        dist.all_reduce(p.grad)
                        p.grad /= t.world
            opt.step()
            t.history.append({"step": 0, "pretrain_photo": float(rec_p.detach()),
                              "pretrain_depth": float(rec_d.detach())})
        enc.requires_grad_(False)
        G.dec.load_state_dict(self.nets["DecP"].state_dict())
        t.opts["G"] = t._optimizer("G")
        self.pretrained = True

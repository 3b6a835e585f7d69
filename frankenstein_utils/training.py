"""One trainer for every mode: a dataclass config (saved in every checkpoint), pluggable networks and objectives,
atomic checkpoints, exact resume, TensorBoard scalars, sample grids, tqdm, NaN guard, CPU or CUDA (bf16 autocast).

Data comes as named streams of dict batches: ``paired`` (image, depth, mask: a photo and its own depth),
``synthetic`` (depth, mask: face-model renders, the inputs we care about) and ``real`` (image: unpaired photos).

Modes (``TrainConfig.mode``):
- ``l1``: supervised L1 on paired data;  ``cvae``: appearance-conditioned generator, z = E(photo), KL to N(0, I);
- ``gan``: synthetic depth -> image against real photos, with ``gan_loss`` log | lsgan | wgan | wgan-gp | hinge;
- ``gan+recon``: plus a net R mapping the generated image back to its depth map, L1 reconstruction
  (``full_cycle``: also real photo -> R -> G -> photo);
- ``l1+gan``: L1 on paired data plus the adversarial loss on outputs from paired AND synthetic depth;
- ``cvae-gan``: BicycleGAN-style: cvae + adversarial loss on E-coded and prior-sampled outputs + latent regression;
- ``cross-encoder``: a shared encoder with two decoders (photos, depth) is pre-trained and frozen; the generator is
  the frozen encoder + a trainable decoder, adversarial loss plus L1 between the codes of output and input.
Switches that compose with the adversarial modes: ``replay_size`` (experience replay), ``adaptive`` (D/G
schedule by the margin D(real) - D(fake)), ``feature_matching``, ``bottleneck_kl``, generator ``NU`` (noise input).
"""
from __future__ import annotations

import io
import json
import math
import random
import time
import zlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from .fileio import atomic_write_bytes, atomic_write_json, png_bytes
from .figures import image_grid
from .losses import (GANLoss, bottleneck_kl, clip_weights, dilate_mask, feature_matching_loss, gradient_penalty, kl_divergence,
                     l1_loss, reparameterize, wgan_critic_steps)
from .models import (AppearanceEncoder, ConvDecoder, ConvEncoder, Generator, count_parameters, define_discriminator,
                     init_weights)
from .replay import ReplayBuffer
from .widgets import to_uint8

MODES = ("l1", "cvae", "gan", "gan+recon", "l1+gan", "cvae-gan", "cross-encoder")
ADVERSARIAL = ("gan", "gan+recon", "l1+gan", "cvae-gan", "cross-encoder")
GAN_LOSSES = ("log", "lsgan", "wgan", "wgan-gp", "hinge")


@dataclass
class TrainConfig:
    """Every setting of a run. ``from_dict`` rejects unknown keys and wrong types (nanoGPT's configurator habit)."""

    mode: str = "l1"
    generator: str = "U"
    width: int = 32
    norm: str = "instance"
    z_dim: int = 8  # appearance code (cvae) or noise (NU)
    flat_layers: int = 6
    mask_input: bool = False  # feed the face mask as a second input channel
    image_size: int = 64
    out_channels: int = 3
    batch_size: int = 16
    steps: int = 1000
    optimizer: str = "adam"
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    l1_weight: float = 1.0
    masked_l1: bool = False
    mask_dilate: int = 3
    kl_weight: float = 1e-3
    encoder_width: int = 32
    # adversarial modes
    gan_loss: str = "lsgan"
    discriminator: str = "patch"
    d_width: int = 32
    d_norm: str = "none"
    spectral_norm: bool = False
    d_lr: float = 0.0  # 0: same as lr
    gan_weight: float = 1.0
    n_critic: int = 1  # critic steps per generator step (wgan: the schedule's base)
    wgan_burst: int = 100  # wgan: critic steps at the start and periodically (original schedule); 0 = off
    wgan_burst_until: int = 25
    wgan_burst_every: int = 500
    wgan_clip: float = 0.01
    gp_weight: float = 10.0
    recon_weight: float = 10.0
    full_cycle: bool = False
    replay_size: int = 0
    replay_memmap: str = ""
    adaptive: bool = False
    adaptive_low: float = 0.1
    adaptive_high: float = 0.5
    feature_matching: float = 0.0
    bottleneck_kl: float = 0.0
    latent_weight: float = 0.5
    code_weight: float = 10.0
    pretrain_steps: int = 200  # cross-encoder: shared encoder + two decoders
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    channels_last: bool = True  # NHWC memory layout on CUDA (faster convolutions); ignored on CPU
    compile: bool = False  # torch.compile the training modules (the raw modules are what checkpoints save)
    num_workers: int = 0
    checkpoint_every: int = 500
    sample_every: int = 250
    log_every: int = 10
    max_loss: float = 1e4  # a loss above this (or NaN/Inf) stops the run
    out_dir: str = "outputs/runs/default"
    data: dict = field(default_factory=dict)  # how the data was made (recorded, not interpreted)

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {MODES}")
        if self.optimizer not in ("adam", "rmsprop"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose adam or rmsprop")
        if self.image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {self.image_size}")
        if self.gan_loss not in GAN_LOSSES:
            raise ValueError(f"unknown gan_loss {self.gan_loss!r}; choose one of {GAN_LOSSES}")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name: f for f in fields(cls)}
        unknown = set(d) - set(known)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys: {sorted(unknown)}")
        defaults = cls()
        for k, v in d.items():
            want = type(getattr(defaults, k))
            if v is not None and want is float and isinstance(v, int) and not isinstance(v, bool):
                continue
            if v is not None and not isinstance(v, want):
                raise ValueError(f"TrainConfig.{k} must be {want.__name__}, got {type(v).__name__} ({v!r})")
        return cls(**d)

    @property
    def in_channels(self) -> int:
        return 2 if self.mask_input else 1


class NonFiniteLossError(RuntimeError):
    """A loss became NaN, infinite or exploded; the last good checkpoint is kept."""


class ResumableBatchSampler(Sampler):
    """Endless batches of indices: a fresh permutation each epoch, seeded by (seed, epoch), starting at batch
    ``start`` so a resumed run sees exactly the batches the uninterrupted one would have. Under DDP each of
    ``world`` processes gets the slice ``rank::world`` of every global batch (a position-based DistributedSampler:
    torch's own shards whole epochs and cannot start mid-epoch)."""

    def __init__(self, n: int, batch_size: int, seed: int, start: int = 0, rank: int = 0, world: int = 1):
        if n < batch_size:
            raise ValueError(f"dataset of {n} items is smaller than the batch size {batch_size}")
        if batch_size % world:
            raise ValueError(f"batch size {batch_size} must be divisible by the number of processes {world}")
        self.n, self.bs, self.seed, self.start = n, batch_size, seed, start
        self.rank, self.world = rank, world
        self.per_epoch = n // batch_size  # drop the last partial batch

    def __iter__(self):
        b = self.start
        while True:
            epoch, pos = divmod(b, self.per_epoch)
            perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
            for p in range(pos, self.per_epoch):
                # every process draws the same global batch and keeps its own slice of it (DDP), so the update
                # equals a single process's on the whole batch, and resuming stays exact
                yield perm[p * self.bs:(p + 1) * self.bs][self.rank::self.world].tolist()
            b = (epoch + 1) * self.per_epoch

    def __len__(self):  # endless; DataLoader only needs this for len(loader)
        return 2 ** 62


def distributed_info() -> tuple[int, int]:
    """(rank, world size) of a torchrun process group, (0, 1) outside one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            import os

            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(name)


def generator_input(depth: torch.Tensor, mask: torch.Tensor | None, mask_input: bool) -> torch.Tensor:
    """Network input: depth in [0, 1] -> [-1, 1] (background -1), plus the mask as a channel if asked."""
    x = depth * 2 - 1
    return torch.cat([x, mask * 2 - 1], 1) if mask_input else x


class Trainer:
    """Build the networks of ``cfg.mode``, then ``fit()``; resumes from ``out_dir/checkpoint.pt`` if present."""

    def __init__(self, cfg: TrainConfig, data: dict[str, Dataset], val: Dataset | None = None, resume: bool = True):
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        self.out = Path(cfg.out_dir)
        self.data, self.val = data, val
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.rank, self.world = distributed_info()
        self.nets = self._build_nets()
        self.tn = self.nets  # the modules training steps call: DDP-wrapped in fit() when running under torchrun
        self.opts = {name: self._optimizer(name) for name in self.trainable}
        self.step = 0
        self.history: list[dict] = []
        self.positions: dict[str, int] = {}  # batches consumed per data stream (exact resume)
        self.replay = ReplayBuffer(cfg.replay_size, cfg.seed, cfg.replay_memmap or None)
        self.adaptive_state = "D"
        self.pretrained = False
        self.gan = GANLoss("wgan" if cfg.gan_loss == "wgan-gp" else cfg.gan_loss) if cfg.mode in ADVERSARIAL else None
        self.ckpt_path = self.out / "checkpoint.pt"
        self._streams: dict = {}
        if resume and self.ckpt_path.exists():
            self._load(self.ckpt_path)

    # ---- construction ---------------------------------------------------------------------------------------------
    def _build_nets(self) -> dict:
        c = self.cfg
        conditioned = c.mode in ("cvae", "cvae-gan")
        z_dim = c.z_dim if (conditioned or c.generator == "NU") else 0
        if c.mode == "cross-encoder":
            if c.mask_input:
                raise ValueError("cross-encoder: the shared encoder takes depth or photo alone (mask_input=False)")
            enc = ConvEncoder(c.out_channels, c.width, c.norm)
            nets = {"G": EncoderDecoder(enc, ConvDecoder(c.out_channels, c.width, c.norm), c.out_channels),
                    "DecP": ConvDecoder(c.out_channels, c.width, c.norm),
                    "DecD": ConvDecoder(1, c.width, c.norm)}
        else:
            nets = {"G": Generator(c.generator, c.in_channels, c.out_channels, c.width, c.norm, z_dim,
                                   c.flat_layers)}
        if conditioned:
            nets["E"] = AppearanceEncoder(c.out_channels, c.z_dim, c.encoder_width)
        if c.mode in ADVERSARIAL:
            nets["D"] = define_discriminator(c.discriminator, c.out_channels, c.d_width, c.image_size,
                                             c.spectral_norm, c.d_norm)
        if c.mode == "gan+recon":
            nets["R"] = Generator("U", c.out_channels, 1, c.width, c.norm)
        nets = {k: init_weights(v).to(self.device) for k, v in nets.items()}
        if c.channels_last and self.device.type == "cuda":
            nets = {k: v.to(memory_format=torch.channels_last) for k, v in nets.items()}
        if c.mode == "cross-encoder":
            nets["G"].enc.requires_grad_(False)  # trained only in pre-training (through DecP / DecD)
        return nets

    @property
    def trainable(self) -> list[str]:
        return list(self.nets)

    def _optimizer(self, name):
        c = self.cfg
        lr = c.d_lr if (name == "D" and c.d_lr > 0) else c.lr
        params = [p for p in self.nets[name].parameters() if p.requires_grad]
        if name == "G" and c.mode == "cross-encoder":
            params = list(self.nets["G"].dec.parameters())
        if c.optimizer == "adam":
            return torch.optim.Adam(params, lr=lr, betas=(c.beta1, c.beta2))
        return torch.optim.RMSprop(params, lr=lr)

    # ---- data -----------------------------------------------------------------------------------------------------
    def _stream(self, name: str, start: int):
        ds = self.data[name]
        sampler = ResumableBatchSampler(len(ds), self.cfg.batch_size, self.cfg.seed + zlib.crc32(name.encode()) % 1000,
                                        start, rank=self.rank, world=self.world)
        # A generator of its own: the loader must not draw from the global RNG, or resuming would shift it.
        loader = DataLoader(ds, batch_sampler=sampler, num_workers=self.cfg.num_workers,
                            pin_memory=self.device.type == "cuda", generator=torch.Generator().manual_seed(0))
        for batch in loader:
            yield {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _next(self, name: str) -> dict:
        """The next batch of a stream; its position is counted so a resumed run continues with the same batches."""
        if name not in self.data:
            raise ValueError(f"mode {self.cfg.mode!r} needs a '{name}' data stream; given: {sorted(self.data)}")
        if name not in self._streams:
            self._streams[name] = self._stream(name, self.positions.get(name, 0))
        self.positions[name] = self.positions.get(name, 0) + 1
        return next(self._streams[name])

    # ---- supervised modes -----------------------------------------------------------------------------------------
    def _loss_mask(self, mask):
        return dilate_mask(mask, self.cfg.mask_dilate) if self.cfg.masked_l1 else None

    def _gin(self, b):
        return generator_input(b["depth"], b["mask"], self.cfg.mask_input)

    def _step_l1(self):
        b = self._next("paired")
        G, opt = self.tn["G"], self.opts["G"]
        with self._autocast():
            fake = G(self._gin(b))
            loss = l1_loss(fake.float(), b["image"], self._loss_mask(b["mask"]))
        opt.zero_grad(set_to_none=True)
        self._check({"l1": loss})
        loss.backward()
        opt.step()
        return {"l1": loss.item()}

    def _step_cvae(self):
        b = self._next("paired")
        G, E = self.tn["G"], self.tn["E"]
        with self._autocast():
            mu, logvar = E(b["image"])
            z = reparameterize(mu.float(), logvar.float())
            fake = G(self._gin(b), z)
            rec = l1_loss(fake.float(), b["image"], self._loss_mask(b["mask"]))
            kl = kl_divergence(mu.float(), logvar.float())
            loss = self.cfg.l1_weight * rec + self.cfg.kl_weight * kl
        for o in (self.opts["G"], self.opts["E"]):
            o.zero_grad(set_to_none=True)
        self._check({"l1": rec, "kl": kl})
        loss.backward()
        self.opts["G"].step()
        self.opts["E"].step()
        return {"l1": rec.item(), "kl": kl.item()}

    # ---- adversarial modes ----------------------------------------------------------------------------------------
    def _batches(self) -> dict:
        need = {"gan": ("synthetic", "real"), "gan+recon": ("synthetic", "real"), "cross-encoder": ("synthetic", "real"),
                "l1+gan": ("paired", "synthetic", "real"), "cvae-gan": ("paired", "synthetic", "real")}
        return {name: self._next(name) for name in need[self.cfg.mode]}

    def _generator_pass(self, b: dict):
        """Fakes to show D (B', C, H, W) and the generator's other loss terms {name: (weight, value)}."""
        c, G = self.cfg, self.tn["G"]
        terms = {}
        syn = b["synthetic"]
        if c.mode in ("gan", "gan+recon", "cross-encoder"):
            fake, bott = G(self._gin(syn), return_bottleneck=True)
            if c.mode == "gan+recon":
                R = self.tn["R"]
                terms["recon"] = (c.recon_weight, l1_loss(R(fake).float(), syn["depth"] * 2 - 1))
                if c.full_cycle:  # photo -> R -> depth -> G -> photo
                    real = b["real"]["image"]
                    d_hat = (R(real) + 1) / 2
                    back = G(generator_input(d_hat, (d_hat > 0.05).float(), c.mask_input))
                    terms["cycle"] = (c.recon_weight, l1_loss(back.float(), real))
            if c.mode == "cross-encoder":
                enc, Gm = self.nets["G"].enc, self.nets["G"]
                code_in = enc(Gm.as_image(self._gin(syn))).detach()
                terms["code"] = (c.code_weight, l1_loss(enc(fake).float(), code_in.float()))
        elif c.mode == "l1+gan":
            p = b["paired"]
            fake_p = G(self._gin(p))
            terms["l1"] = (c.l1_weight, l1_loss(fake_p.float(), p["image"], self._loss_mask(p["mask"])))
            fake_s, bott = G(self._gin(syn), return_bottleneck=True)
            fake = torch.cat([fake_p, fake_s])
        else:  # cvae-gan
            p, E = b["paired"], self.tn["E"]
            mu, logvar = E(p["image"])
            fake_p = G(self._gin(p), reparameterize(mu.float(), logvar.float()))
            terms["l1"] = (c.l1_weight, l1_loss(fake_p.float(), p["image"], self._loss_mask(p["mask"])))
            terms["kl"] = (c.kl_weight, kl_divergence(mu.float(), logvar.float()))
            z_r = torch.randn(len(syn["depth"]), c.z_dim, device=self.device)
            fake_s, bott = G(self._gin(syn), z_r, return_bottleneck=True)
            E.requires_grad_(False)  # latent regression trains G only (BicycleGAN)
            terms["latent"] = (c.latent_weight, l1_loss(E(fake_s)[0].float(), z_r))
            E.requires_grad_(True)
            fake = torch.cat([fake_p, fake_s])
        if c.bottleneck_kl > 0:
            terms["bottleneck_kl"] = (c.bottleneck_kl, bottleneck_kl(bott.float()))
        return fake, terms

    def _margin(self, d_real, d_fake) -> float:
        """Mean D(real) - D(fake), as probabilities for the log loss, raw scores otherwise."""
        if self.cfg.gan_loss == "log":
            d_real, d_fake = torch.sigmoid(d_real), torch.sigmoid(d_fake)
        return float(d_real.float().mean() - d_fake.float().mean())

    def _d_step(self, b, fake) -> dict:
        c, D, opt = self.cfg, self.tn["D"], self.opts["D"]
        real = b["real"]["image"]
        fake = self.replay.query(fake.detach())
        with self._autocast():
            d_real, d_fake = D(real), D(fake)
            l_real, l_fake = self.gan(d_real, True, True), self.gan(d_fake, False, True)
            loss = l_real + l_fake
            out = {"d_real": l_real, "d_fake": l_fake}
            if c.gan_loss == "wgan-gp":
                gp = gradient_penalty(D, real, fake)
                loss = loss + c.gp_weight * gp
                out["gp"] = gp
        self._check(out)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if c.gan_loss == "wgan":
            clip_weights(D, c.wgan_clip)
        return {k: float(v.detach()) for k, v in out.items()}

    def _step_adversarial(self):
        c, D = self.cfg, self.tn["D"]
        b = self._batches()
        log = {}
        do_d = do_g = True
        if c.adaptive:  # hysteresis: train D until the margin exceeds `high`, then G until it falls below `low`
            with torch.no_grad(), self._autocast():
                fake, _ = self._generator_pass(b)
                m = self._margin(D(b["real"]["image"]), D(fake))
            if self.adaptive_state == "D" and m > c.adaptive_high:
                self.adaptive_state = "G"
            elif self.adaptive_state == "G" and m < c.adaptive_low:
                self.adaptive_state = "D"
            do_d, do_g = self.adaptive_state == "D", self.adaptive_state == "G"
            log["margin"] = m
        # One generator pass serves both steps: D sees its output detached, G's step reuses it with its graph.
        with torch.set_grad_enabled(do_g), self._autocast():
            fake, terms = self._generator_pass(b)
        if do_d:
            n_d = c.n_critic
            if c.gan_loss in ("wgan", "wgan-gp") and c.wgan_burst:
                n_d = wgan_critic_steps(self.step, c.n_critic, c.wgan_burst, c.wgan_burst_until, c.wgan_burst_every)
            for k in range(n_d):
                bk, fk = b, fake
                if k:  # further critic steps: fresh batches
                    bk = self._batches()
                    with torch.no_grad(), self._autocast():
                        fk, _ = self._generator_pass(bk)
                log.update(self._d_step(bk, fk.detach()))
        if do_g:
            with self._autocast():
                if c.feature_matching > 0:
                    Dm = self.nets["D"]  # features() bypasses DDP; D is frozen during the G step anyway
                    real_feats, _ = Dm.features(b["real"]["image"])
                    fake_feats, d_fake = Dm.features(fake)
                    terms["feature_matching"] = (c.feature_matching, feature_matching_loss(real_feats, fake_feats))
                else:
                    d_fake = D(fake)
                adv = self.gan(d_fake, True, for_d=False)
                loss = c.gan_weight * adv + sum(w * v for w, v in terms.values())
            self._check({"g_adv": adv, **{k: v for k, (w, v) in terms.items()}})
            names = [n for n in ("G", "E", "R") if n in self.opts]
            for n in names:
                self.opts[n].zero_grad(set_to_none=True)
            D.requires_grad_(False)  # G's step must not leave gradients in D
            loss.backward()
            D.requires_grad_(True)
            for n in names:
                self.opts[n].step()
            log["g_adv"] = float(adv.detach())
            log.update({k: float(v.detach()) for k, (w, v) in terms.items()})
        log["d_stepped"], log["g_stepped"] = float(do_d), float(do_g)
        return log

    def _pretrain_cross_encoder(self, progress: bool):
        """Shared encoder + photo decoder + depth decoder as two autoencoders; then the encoder is frozen and the
        generator's decoder starts from the photo decoder."""
        c, G = self.cfg, self.nets["G"]
        enc = G.enc
        enc.requires_grad_(True)
        params = list(enc.parameters()) + list(self.nets["DecP"].parameters()) + list(self.nets["DecD"].parameters())
        opt = torch.optim.Adam(params, lr=c.lr, betas=(c.beta1, c.beta2))
        for i in tqdm(range(c.pretrain_steps), desc="cross-encoder pre-training", disable=not progress):
            real = self._next("real")["image"]
            syn = self._next("synthetic")
            d = syn["depth"] * 2 - 1
            with self._autocast():
                rec_p = l1_loss(self.nets["DecP"](enc(real)).float(), real)
                rec_d = l1_loss(self.nets["DecD"](enc(G.as_image(d))).float(), d)
                loss = rec_p + rec_d
            self._check({"pretrain_photo": rec_p, "pretrain_depth": rec_d})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self.history.append({"step": 0, "pretrain_photo": float(rec_p.detach()), "pretrain_depth": float(rec_d.detach())})
        enc.requires_grad_(False)
        G.dec.load_state_dict(self.nets["DecP"].state_dict())
        self.opts["G"] = self._optimizer("G")
        self.pretrained = True

    def _autocast(self):
        on = self.cfg.amp and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=on)

    def _check(self, losses: dict):
        for name, v in losses.items():
            v = float(v.detach()) if torch.is_tensor(v) else float(v)
            if not math.isfinite(v) or abs(v) > self.cfg.max_loss:
                kept = f"last good checkpoint kept at {self.ckpt_path}" if self.ckpt_path.exists() else \
                    "no checkpoint was written yet"
                raise NonFiniteLossError(f"run {self.out}: loss '{name}' = {v} at step {self.step + 1} "
                                         f"(diverged); stopped, {kept}")

    # ---- loop -----------------------------------------------------------------------------------------------------
    def fit(self, progress: bool = True) -> list[dict]:
        c = self.cfg
        step_fn = {"l1": self._step_l1, "cvae": self._step_cvae}.get(c.mode, self._step_adversarial)
        for net in self.nets.values():
            net.train()
        main = self.rank == 0  # logging, samples and checkpoints on rank 0 only
        progress = progress and main
        writer = self._writer() if main else None
        self._sample_batch = self._fixed_val_batch()
        if c.mode == "cross-encoder" and not self.pretrained:
            self._pretrain_cross_encoder(progress)
            if main:
                self.save()
        # after pre-training: wrapping broadcasts rank 0's weights to every process
        if self.world > 1 and self.tn is self.nets:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.tn = {k: DDP(v, device_ids=ids, find_unused_parameters=True)
                       if any(p.requires_grad for p in v.parameters()) else v for k, v in self.nets.items()}
        if c.compile and not getattr(self, "_compiled", False):
            self.tn = {k: torch.compile(v) for k, v in self.tn.items()}
            self._compiled = True
        t0 = time.perf_counter()
        with tqdm(total=c.steps, initial=self.step, desc=f"{c.mode}/{c.generator}", disable=not progress) as bar:
            while self.step < c.steps:
                losses = step_fn()
                self.step += 1
                self.history.append({"step": self.step, **losses})
                if writer and (self.step % c.log_every == 0 or self.step == c.steps):
                    for k, v in losses.items():
                        writer.add_scalar(f"loss/{k}", v, self.step)
                if main and c.sample_every and self.step % c.sample_every == 0:
                    self.save_samples()
                if main and ((c.checkpoint_every and self.step % c.checkpoint_every == 0) or self.step == c.steps):
                    self.save()
                bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
                bar.update(1)
        if writer:
            writer.add_scalar("time/seconds_this_session", time.perf_counter() - t0, self.step)
            writer.close()
        return self.history

    def _writer(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard not installed: train without it
            return None
        return SummaryWriter(str(self.out / "tb"))

    # ---- samples --------------------------------------------------------------------------------------------------
    def _fixed_val_batch(self, n: int = 8):
        """Fixed inputs for sample grids: depth from the synthetic stream if there is one (else the validation or
        paired set), photos from the validation, paired or real set."""
        def first(ds, keys):
            items = [ds[i] for i in range(min(n, len(ds)))]
            return {k: torch.stack([it[k] for it in items]).to(self.device) for k in keys}
        src_d = self.data.get("synthetic") or self.val or self.data.get("paired")
        src_i = self.val or self.data.get("paired") or self.data.get("real")
        b = first(src_d, ("depth", "mask"))
        b["image"] = first(src_i, ("image",))["image"]
        k = min(len(b["depth"]), len(b["image"]))
        return {key: v[:k] for key, v in b.items()}

    @torch.no_grad()
    def generate(self, depth, mask, image=None, z=None):
        """Generated images for depth maps; a cvae uses z = E(image) mean if an image is given, else z (or 0)."""
        G = self.nets["G"]
        G.eval()
        if "E" in self.nets:
            self.nets["E"].eval()
            if z is None:
                z = self.nets["E"](image)[0] if image is not None else torch.zeros(len(depth), self.cfg.z_dim,
                                                                                    device=depth.device)
        out = G(generator_input(depth, mask, self.cfg.mask_input), z).float()
        G.train()
        if "E" in self.nets:
            self.nets["E"].train()
        return out

    def save_samples(self):
        b = self._sample_batch
        fake = self.generate(b["depth"], b["mask"], b["image"])
        rows = [b["depth"].expand(-1, self.cfg.out_channels, -1, -1), (fake + 1) / 2, (b["image"] + 1) / 2]
        grid = image_grid(torch.cat(rows).clamp(0, 1), ncol=len(fake))
        atomic_write_bytes(self.out / "samples" / f"step_{self.step:06d}.png", png_bytes(to_uint8(grid)))

    # ---- checkpoints ----------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"config": asdict(self.cfg), "step": self.step, "history": self.history,
                "positions": dict(self.positions), "replay": self.replay.state_dict(),
                "adaptive_state": self.adaptive_state, "pretrained": self.pretrained,
                "nets": {k: v.state_dict() for k, v in self.nets.items()},
                "opts": {k: v.state_dict() for k, v in self.opts.items()},
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}}

    def save(self, path=None):
        """Write the checkpoint atomically (never a half-written file under the final name)."""
        buf = io.BytesIO()
        torch.save(self.state(), buf)
        atomic_write_bytes(path or self.ckpt_path, buf.getvalue())
        atomic_write_json(self.out / "config.json", asdict(self.cfg))

    def _load(self, path):
        ck = torch.load(path, map_location=self.device, weights_only=False)
        saved = ck["config"]
        mine = asdict(self.cfg)
        # keys a run may change on resume; keys missing from an older checkpoint take their defaults
        free = ("steps", "out_dir", "device", "num_workers", "checkpoint_every", "sample_every", "log_every", "amp",
                "channels_last", "compile")
        differ = {k for k in mine if k not in free and k in saved and saved[k] != mine[k]}
        if differ:
            raise ValueError(f"{path}: checkpoint was made with another configuration ({sorted(differ)}); "
                             f"use a new out_dir or the same settings")
        for k, v in ck["nets"].items():
            self.nets[k].load_state_dict(v)
        for k, v in ck["opts"].items():
            if not (k == "G" and self.cfg.mode == "cross-encoder"):
                self.opts[k].load_state_dict(v)
        self.step, self.history = ck["step"], ck["history"]
        self.positions = dict(ck.get("positions", {}))
        if "replay" in ck:
            self.replay.load_state_dict(ck["replay"])
        self.adaptive_state = ck.get("adaptive_state", "D")
        self.pretrained = ck.get("pretrained", False)
        if self.cfg.mode == "cross-encoder" and self.pretrained:
            self.nets["G"].enc.requires_grad_(False)
            self.opts["G"] = self._optimizer("G")
            self.opts["G"].load_state_dict(ck["opts"]["G"])
        torch.set_rng_state(ck["rng"]["torch"])
        np.random.set_state(ck["rng"]["numpy"])
        random.setstate(ck["rng"]["python"])
        if ck["rng"]["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(ck["rng"]["cuda"])


def load_run(path, device: str = "cpu") -> Trainer:
    """Rebuild a run (networks, optimizers, step, history) from its checkpoint file alone; loads on CPU by default."""
    path = Path(path)
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
        cfg = TrainConfig.from_dict({**ck["config"], "device": device})
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    cfg.out_dir = str(path.parent)
    t = Trainer(cfg, data={}, resume=False)
    t._load(path)
    for net in t.nets.values():
        net.eval()
    return t


def supervised_config(name: str, **overrides) -> TrainConfig:
    """The config of a named supervised model: ``U``, ``V``, ``F``, ``NU`` (L1 on pairs with that generator) or
    ``cvae`` (the appearance-conditioned U generator with its encoder)."""
    if name == "cvae":
        return TrainConfig(mode="cvae", generator="U", **overrides)
    if name in ("U", "V", "F", "NU"):
        return TrainConfig(mode="l1", generator=name, **overrides)
    raise ValueError(f"unknown supervised model {name!r}; choose U, V, F, NU or cvae")


class EncoderDecoder(torch.nn.Module):
    """The cross-encoder's generator: the shared (frozen) encoder, then a trainable photo decoder. Depth input
    (B, 1, H, W) in [-1, 1] is repeated to the photo's channels, as the shared encoder takes one kind of input."""

    def __init__(self, enc, dec, channels: int):
        super().__init__()
        self.enc, self.dec, self.channels = enc, dec, channels
        self.z_dim = 0

    def as_image(self, x):
        return x.expand(-1, self.channels, -1, -1) if x.shape[1] == 1 else x

    def forward(self, x, z=None, return_bottleneck: bool = False):
        h = self.enc(self.as_image(x))
        y = self.dec(h)
        return (y, h) if return_bottleneck else y


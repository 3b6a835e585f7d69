"""What every objective shares: the generator's input (depth, mask, buffers) and the Objective base class."""

from __future__ import annotations

import torch

from ..nets.layers import init_weights
from ..nets.study import Generator
from .losses import GANLoss, dilate_mask


def generator_input(depth: torch.Tensor, mask: torch.Tensor | None, mask_input: bool,
                    buffers: torch.Tensor | None = None) -> torch.Tensor:
    """Network input: depth in [0, 1] -> [-1, 1] (background -1), plus the mask as a channel if asked, plus the
    attribute buffers (B, 3 n, H, W) in [0, 1] -> [-1, 1] when the generator reads them."""
    x = depth * 2 - 1
    parts = [x, mask * 2 - 1] if mask_input else [x]
    if buffers is not None:
        parts.append(buffers.to(x.dtype) * 2 - 1)
    return torch.cat(parts, 1) if len(parts) > 1 else x


def batch_buffers(cfg, b: dict):
    """The batch's attribute buffers if the run reads them (a clear error where a stream lacks them), else None."""
    if not cfg.buffers:
        return None
    if "buffers" not in b:
        raise ValueError(f"this run reads buffers {cfg.buffers!r}; a data stream gave only {sorted(b)} "
                         "(build its data with frankenstein_utils.data.buffers)")
    return b["buffers"]


class Objective:
    """Base of every objective (the study's, the flagship's, the peers'): ``networks()`` (every module saved in the
    checkpoint), ``trainable`` (those with an optimizer), ``optimizer(name)``, ``step()`` (one training step; returns
    the logged losses), ``generate``, and the objective's own checkpoint state (``state`` / ``load_state``). ``t`` is
    the Trainer: data streams (``t._next``), ``t.tn`` (the modules to call, DDP-wrapped when distributed), autocast,
    NaN guard (``t._check``).

    ``init_all``: the study's objectives build their modules, then initialise every one (``init_weights``, in dict
    order); the flagship and the peers initialise each module as they build it. ``gan_loss(cfg)`` names the loss of
    an objective that owns its ``GANLoss`` (``self.gan``); ``discriminators`` get ``d_lr``."""

    init_all = True
    gan_loss = None
    discriminators = ("D",)

    def __init__(self, trainer):
        self.t, self.cfg = trainer, trainer.cfg
        nets = self.networks()
        if self.init_all:
            nets = {k: init_weights(v) for k, v in nets.items()}
        self.nets = trainer.place(nets)  # device, and NHWC on CUDA with channels_last
        if self.gan_loss is not None:
            self.gan = GANLoss(self.gan_loss(self.cfg))

    def networks(self) -> dict:
        raise NotImplementedError

    def generator(self, z_dim: int = 0):
        c = self.cfg
        return Generator(c.generator, c.in_channels, c.out_channels, c.width, c.norm, z_dim, c.flat_layers)

    @property
    def trainable(self) -> list[str]:
        return [k for k in self.nets if k != "G_ema"]  # the EMA copy follows G, it has no optimizer

    def parameters_of(self, name: str):
        return [p for p in self.nets[name].parameters() if p.requires_grad]

    def lr_of(self, name: str) -> float:
        """The configured learning rate of ``name``'s optimizer (``d_lr`` for a discriminator where set)."""
        c = self.cfg
        return c.d_lr if (name in self.discriminators and c.d_lr > 0) else c.lr

    def optimizer(self, name: str):
        c = self.cfg
        lr = self.lr_of(name)
        if c.optimizer == "adam":
            return torch.optim.Adam(self.parameters_of(name), lr=lr, betas=(c.beta1, c.beta2))
        return torch.optim.RMSprop(self.parameters_of(name), lr=lr)

    def gin(self, b):
        return generator_input(b["depth"], b["mask"], self.cfg.mask_input, batch_buffers(self.cfg, b))

    def loss_mask(self, mask):
        return dilate_mask(mask, self.cfg.mask_dilate) if self.cfg.masked_l1 else None

    def _update(self, loss, names, frozen=()):
        """zero_grad, backward (``frozen`` nets get no gradient), step -- for the optimizers of ``names``."""
        for n in names:
            self.t.opts[n].zero_grad(set_to_none=True)
        requires_grad([self.nets[f] for f in frozen], False)
        loss.backward()
        requires_grad([self.nets[f] for f in frozen], True)
        for n in names:
            self.t.opts[n].step()

    def step(self) -> dict:
        raise NotImplementedError

    def state(self) -> dict:
        """Extra entries of the checkpoint (top level)."""
        return {}

    def load_state(self, ck: dict) -> None:
        pass

    @torch.no_grad()
    def generate(self, depth, mask, image=None, z=None, buffers=None):
        """Generated images for depth maps (and the buffers a buffers run reads), by G's moving average where there
        is one; with an encoder E, z = E(image) mean if an image is given, else z (or 0). Every network runs in
        eval mode and returns to the mode it was in."""
        buffers = batch_buffers(self.cfg, {"buffers": buffers} if buffers is not None else {})
        G, E = self.nets.get("G_ema", self.nets["G"]), self.nets.get("E")
        was = {k: n.training for k, n in self.nets.items()}
        for n in self.nets.values():
            n.eval()
        if E is not None and z is None:
            z = E(image)[0] if image is not None else torch.zeros(len(depth), self.cfg.z_dim, device=depth.device)
        out = G(generator_input(depth, mask, self.cfg.mask_input, buffers), z).float()
        for k, n in self.nets.items():
            n.train(was[k])
        return out


def requires_grad(nets, on: bool):
    """Switch gradients of every parameter of ``nets`` on or off (a frozen D in G's update)."""
    for n in nets:
        n.requires_grad_(on)

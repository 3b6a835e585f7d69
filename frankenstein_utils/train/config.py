"""The training config (a dataclass saved in every checkpoint), its checks, and the named settings built from it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch

from ..objectives.registry import OBJECTIVES, PRESETS

MODES = tuple(OBJECTIVES)  # the study's seven, then the flagship and its peers
ADVERSARIAL = ("gan", "gan+recon", "l1+gan", "cvae-gan", "cross-encoder")  # the study's modes with a discriminator
GAN_LOSSES = ("log", "lsgan", "wgan", "wgan-gp", "hinge")
# (n_critic, wgan_burst) each loss gets unless set: WGAN (Arjovsky et al. 2017) trains the critic 5 times per
# generator step, 100 times in the first 25 steps and every 500th; WGAN-GP (Gulrajani et al. 2017) 5 times, no burst.
# The other losses take one D step (the burst is read by the wgan losses only).
CRITIC_SCHEDULES = {"wgan": (5, 100), "wgan-gp": (5, 0), "default": (1, 100)}


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
    # attribute buffers fed beside depth (``data.buffers.BUFFERS``, comma-separated, 3 channels each: e.g.
    # "colour,normal"), rendered from the face model's appearance half with ``appearance_k`` components; "" = depth only
    buffers: str = ""
    appearance_k: int = 0
    # the buffers (and depth) rendered at this many times the size and averaged down (s x s box), so the face's
    # edge is anti-aliased like a photo's, not a point-sampled staircase; 1 = point-sampled, the paired set's depth
    buffers_supersample: int = 1
    image_size: int = 64
    out_channels: int = 3
    batch_size: int = 16
    steps: int = 1000
    optimizer: str = "adam"
    lr: float = 2e-4
    # linear learning-rate decay (pix2pix's schedule): every optimizer's rate is constant up to step lr_decay_from,
    # then falls linearly to 0 at step lr_decay_to; 0 = constant (lr_schedule_factor)
    lr_decay_from: int = 0
    lr_decay_to: int = 0
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
    # critic steps per generator step; None = the loss's own (CRITIC_SCHEDULES: 5 for wgan and wgan-gp, else 1)
    n_critic: int | None = None
    # wgan: critic steps at the start and periodically (the original schedule); 0 = off; None = the loss's own
    # (100 for wgan; 0 for wgan-gp, whose paper has no burst)
    wgan_burst: int | None = None
    wgan_burst_until: int = 25
    wgan_burst_every: int = 500
    wgan_clip: float = 0.01
    gp_weight: float = 10.0
    recon_weight: float = 10.0
    full_cycle: bool = False
    replay_size: int = 0
    replay_memmap: str = ""
    adaptive: bool = False  # the original's schedule (dvg13/image-model basic_gan), thresholds on D(real) - D(fake)
    adaptive_low: float = 0.05  # below it D trains again (up to adaptive_max_d times per step)
    adaptive_high: float = 0.95  # at or above it D skips this step
    adaptive_max_d: int = 10  # cap on D steps per G step (the original loops without one)
    feature_matching: float = 0.0
    bottleneck_kl: float = 0.0
    latent_weight: float = 0.5
    code_weight: float = 10.0
    pretrain_steps: int = 200  # cross-encoder: shared encoder + two decoders
    # flagship / peers (modes flagship, pix2pix, bicyclegan: objectives/flagship.py, objectives/peers.py)
    fs_bottleneck: int = 4  # generator bottleneck in px (4 at 64 px: one unit sees the whole face)
    fs_upsample: str = "resize"  # resize (nearest x2 then conv) | transpose
    fs_modulation: str = "spade"  # spade (depth per pixel + z per channel) | adain (z only) | none
    fs_skips: bool = True
    fs_scales: int = 2  # multi-scale PatchGAN
    fs_r1: float = 1.0  # R1 gamma (0 = off), applied lazily every fs_r1_every steps
    fs_r1_every: int = 4
    fs_diffaug: str = "color,translation,cutout"  # DiffAugment policy, "" = off
    fs_ema: float = 0.999  # EMA decay of G's weights (sampling uses the average), 0 = off
    fs_input_blur: float = 0.0  # sigma (px) of a fixed Gaussian low-pass of G's input (softens the mask's staircase)
    # a checkpoint whose networks, optimizer moments and EMA start this run (a fine-tune, e.g. on other data); the
    # run's own step, data order and RNG start fresh; "" = random initialisation
    init_from: str = ""
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    channels_last: bool = True  # NHWC memory layout on CUDA (faster convolutions); ignored on CPU
    compile: bool = False  # torch.compile the training modules (the raw modules are what checkpoints save)
    num_workers: int = 0
    checkpoint_every: int = 500
    snapshot_every: int = 0  # also keep the checkpoint of every multiple of this step as snapshots/step_<s>.pt (curves)
    sample_every: int = 250
    log_every: int = 10
    max_loss: float = 1e4  # a loss above this (or NaN/Inf) stops the run
    max_param: float = 1e4  # a parameter above this in magnitude (or NaN/Inf) stops the run before it is saved
    # what the generator's input looks like (the depth's RenderConfig: resolution, framing/window, depth mode,
    # region, ...) plus where it came from; recorded in every checkpoint and checked by ``apply``. {} = not recorded.
    input_convention: dict = field(default_factory=dict)
    out_dir: str = "outputs/runs/default"
    data: dict = field(default_factory=dict)  # how the data was made (recorded, not interpreted)

    def __post_init__(self):
        for k, v in critic_schedule(self.mode, self.gan_loss).items():
            if getattr(self, k) is None:
                setattr(self, k, v)
        if not (math.isfinite(self.fs_input_blur) and self.fs_input_blur >= 0):
            raise ValueError(f"fs_input_blur must be a finite sigma >= 0 in px, got {self.fs_input_blur}")
        if self.fs_input_blur and self.mode != "flagship":
            raise ValueError(f"fs_input_blur is read by mode flagship only, not {self.mode!r}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {MODES}")
        if self.optimizer not in ("adam", "rmsprop"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose adam or rmsprop")
        if self.optimizer != "adam" and self.mode in ("flagship", "pix2pix", "bicyclegan"):
            raise ValueError(f"mode {self.mode!r} trains with Adam (its paper's setting); optimizer "
                             f"{self.optimizer!r} is for the study's modes")
        if self.image_size % 4 or self.image_size < 4:
            raise ValueError(f"image_size must be a positive multiple of 4, got {self.image_size}")
        for k in ("steps", "batch_size", "width", "d_width", "encoder_width", "n_critic", "adaptive_max_d"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        for k in ("checkpoint_every", "sample_every", "log_every", "replay_size", "num_workers", "pretrain_steps",
                  "snapshot_every"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k} must be >= 0, got {getattr(self, k)}")
        if self.lr_decay_to and not 0 <= self.lr_decay_from < self.lr_decay_to:
            raise ValueError(f"lr_decay_to ({self.lr_decay_to}) must be after lr_decay_from ({self.lr_decay_from}) "
                             f">= 0, or 0 for a constant learning rate")
        if self.lr_decay_from and not self.lr_decay_to:
            raise ValueError(f"lr_decay_from={self.lr_decay_from} needs lr_decay_to (the step the rate reaches 0)")
        if not self.lr > 0 or not self.d_lr >= 0:  # NaN fails both
            raise ValueError(f"lr must be > 0 and d_lr >= 0, got lr={self.lr}, d_lr={self.d_lr}")
        if self.out_channels not in (1, 3):
            raise ValueError(f"out_channels must be 1 (greyscale) or 3 (RGB), got {self.out_channels}")
        if not self.adaptive_low <= self.adaptive_high:
            raise ValueError(f"adaptive_low ({self.adaptive_low}) must not exceed adaptive_high ({self.adaptive_high})")
        if self.gan_loss not in GAN_LOSSES:
            raise ValueError(f"unknown gan_loss {self.gan_loss!r}; choose one of {GAN_LOSSES}")
        from ..data.buffers import BUFFERS, buffer_names

        names = buffer_names(self.buffers)
        bad = [n for n in names if n not in BUFFERS]
        if bad or len(set(names)) != len(names):
            raise ValueError(f"buffers {self.buffers!r}: each at most once, from {BUFFERS}")
        if names and self.appearance_k < 1:
            raise ValueError("buffers need appearance_k >= 1 (the appearance components they are rendered with)")
        if names and self.mode not in ("flagship", "l1", "cvae"):
            raise ValueError(f"buffers are read by modes flagship, l1 and cvae, not {self.mode!r}")
        if not 1 <= self.buffers_supersample <= 4 or (self.buffers_supersample > 1 and not names):
            raise ValueError(f"buffers_supersample must be 1-4 (render s times the size, average s x s), and > 1 "
                             f"only with buffers; got {self.buffers_supersample}")
        for k in ("max_loss", "max_param"):  # NaN or inf would switch the guard off
            v = getattr(self, k)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{k} must be a finite number > 0 (the NaN guard's threshold), got {v}")
        if self.mask_dilate < 0:
            raise ValueError(f"mask_dilate must be >= 0 (pixels the face mask grows by), got {self.mask_dilate}")
        if self.z_dim < 0 or (self.z_dim < 1 and _uses_code(self)):
            raise ValueError(f"z_dim must be >= {1 if _uses_code(self) else 0}"
                             + (f" for {_uses_code(self)} (it draws a code of z_dim numbers)" if _uses_code(self) else "")
                             + f", got {self.z_dim}")
        if self.mode == "flagship" and self.fs_scales < 1:
            raise ValueError(f"fs_scales must be >= 1, got {self.fs_scales}")
        problem = _size_problem(self)
        if problem:
            raise ValueError(problem)
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, TypeError, ValueError):
                raise ValueError(f"device {self.device!r}: not a device name; use auto, cpu, cuda or cuda:N") from None

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
        from ..data.buffers import buffer_names

        return (2 if self.mask_input else 1) + 3 * len(buffer_names(self.buffers))


def lr_schedule_factor(cfg: TrainConfig, step: int) -> float:
    """The share of its configured rate every optimizer uses for the step after ``step`` steps:

    f(s) = 1 for s <= a;  f(s) = (b - s) / (b - a) for a < s < b;  f(s) = 0 for s >= b,

    with a = ``lr_decay_from`` and b = ``lr_decay_to`` (b = 0: f = 1 always). A function of the step alone, so a
    resumed run takes the same rates as an uninterrupted one."""
    a, b = cfg.lr_decay_from, cfg.lr_decay_to
    if not b or step <= a:
        return 1.0
    return max(0.0, (b - step) / (b - a))


def critic_schedule(mode: str, gan_loss: str) -> dict:
    """{n_critic, wgan_burst} a config of ``mode`` and ``gan_loss`` gets unless given: the loss's own schedule where
    the mode takes D steps by it (the flagship and its peers take one D step whatever the loss)."""
    sched = CRITIC_SCHEDULES.get(gan_loss, CRITIC_SCHEDULES["default"]) if mode in ADVERSARIAL \
        else CRITIC_SCHEDULES["default"]
    return dict(zip(("n_critic", "wgan_burst"), sched))


def _uses_code(c: TrainConfig) -> str:
    """What in config ``c`` draws a code of ``z_dim`` numbers ("" if nothing does): the appearance code of the cvae
    modes, the flagship and BicycleGAN, or the noise of generator NU (which would silently take 8 for 0)."""
    if c.mode in ("cvae", "cvae-gan", "flagship", "bicyclegan"):
        return f"mode {c.mode!r}"
    if c.generator == "NU" and c.mode in ("l1", "gan", "gan+recon", "l1+gan"):
        return "generator 'NU'"
    return ""


def _size_problem(c: TrainConfig) -> str:
    """Why the networks of config ``c`` cannot take ``c.image_size`` px images ("" if they can), from the convolution
    arithmetic of ``nets/study.py`` and ``nets/flagship.py``, so a size that is too small fails here in one line instead
    of in the first step, after the data is built. A 4x4 stride-2 conv halves a size, a 4x4 stride-1 conv with padding 1
    takes 1 off it, and instance normalisation needs at least 2x2. Hence: the PatchGAN (3 layers) needs 12 px; the
    4-layer PatchGAN of pix2pix, BicycleGAN and the flagship 24 px at each of its scales (each scale halves the size);
    the U/V/NU generators (and the R net of gan+recon, the cross-encoder's codes) with instance norm 8 px (their
    bottleneck is a quarter of the size); the small discriminator with instance norm 8 px."""
    S, mode = c.image_size, c.mode
    needs = []  # (smallest size, the network that needs it)
    if mode == "flagship":
        b = c.fs_bottleneck
        n = S // b if b >= 2 and S % b == 0 else 0
        if n < 2 or n & (n - 1):
            return (f"mode 'flagship' needs image_size = fs_bottleneck (>= 2) x a power of 2 (>= 2), got image_size "
                    f"{S} and fs_bottleneck {b}")
        needs.append((24 * 2 ** (c.fs_scales - 1), f"its discriminator ({c.fs_scales} scale(s), 4-layer PatchGANs)"))
    elif mode in ("pix2pix", "bicyclegan"):
        if S & (S - 1):
            return f"mode {mode!r} needs a power-of-2 image_size (its pix2pix U-Net), got {S}"
        needs.append((24 if mode == "pix2pix" else 48, "its discriminator (" + (
            "a 4-layer PatchGAN)" if mode == "pix2pix" else "2 scales, 4-layer PatchGANs)")))
    else:
        quarter_size = mode in ("gan+recon", "cross-encoder") or c.generator in ("U", "V", "NU")
        if c.norm == "instance" and quarter_size:
            needs.append((8, "the generator's instance normalisation at a quarter of the size"))
        if mode in ADVERSARIAL and c.discriminator == "patch":
            needs.append((12, "the PatchGAN discriminator (3 layers)"))
        elif mode in ADVERSARIAL and c.d_norm == "instance":
            needs.append((8, "the small discriminator's instance normalisation at a quarter of the size"))
    floor, why = max(needs, default=(4, ""))
    if S >= floor:
        return ""
    if mode == "flagship":  # the smallest size of the right form
        smallest = c.fs_bottleneck * 2 ** max(1, math.ceil(math.log2(floor / c.fs_bottleneck)))
    elif mode in ("pix2pix", "bicyclegan"):
        smallest = 2 ** math.ceil(math.log2(floor))
    else:
        smallest = floor
    return f"image_size {S} is too small for mode {mode!r}: {why} needs image_size >= {smallest}"




def preset_config(name: str, **overrides) -> TrainConfig:
    """A ``TrainConfig`` from a named preset, then ``overrides``."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return TrainConfig(**{**PRESETS[name], **overrides})


def supervised_config(name: str, **overrides) -> TrainConfig:
    """The config of a named supervised model: ``U``, ``V``, ``F``, ``NU`` (L1 on pairs with that generator) or
    ``cvae`` (the appearance-conditioned U generator with its encoder)."""
    if name == "cvae":
        return TrainConfig(mode="cvae", generator="U", **overrides)
    if name in ("U", "V", "F", "NU"):
        return TrainConfig(mode="l1", generator=name, **overrides)
    raise ValueError(f"unknown supervised model {name!r}; choose U, V, F, NU or cvae")

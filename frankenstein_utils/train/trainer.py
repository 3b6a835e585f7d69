"""The trainer: one loop for every mode, with checkpoints, exact resume, TensorBoard, samples, DDP and autocast.

One trainer for every mode: a dataclass config (saved in every checkpoint), atomic checkpoints, exact resume,
TensorBoard scalars, sample grids, tqdm, NaN guard, DDP, CPU or CUDA (bf16 autocast). Each mode's networks, losses and
step are its objective's, one small class each (``objectives/study.py``; flagship, pix2pix, BicycleGAN:
``objectives/flagship.py``, ``objectives/peers.py``).

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
Switches that compose with the adversarial modes: ``replay_size`` (experience replay), ``adaptive`` (the original's
D/G schedule by the margin D(real) - D(fake): always one G step, D 0, 1 or several times), ``feature_matching``,
``bottleneck_kl``, generator ``NU`` (noise input).

Under DDP every decision that depends on data (the adaptive margin, the NaN guard) is all-reduced, so all processes
take the same branch; each process keeps its own replay pool, and every pool is saved beside the checkpoint.

Checkpoints hold tensors and plain Python values only (numpy's RNG state as a tensor and numbers) and are read with
``torch.load(weights_only=True)``: reading one runs no code. A checkpoint of the older, pickled format is refused
with the command that converts it (``python -m frankenstein_utils.pretrained.convert OLD NEW``, which reads OLD
without running code too: it allows only the numpy arrays, numbers and paths the older format held).
"""

from __future__ import annotations

import io
import math
import random
import time
import zlib
from dataclasses import MISSING, asdict, fields
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm.auto import tqdm

from ..io.figures import image_grid
from ..io.files import FolderBusyError, FolderLock, atomic_write_bytes, atomic_write_json, png_bytes, remove_orphan_tmp
from ..io.images import to_uint8
from ..objectives.base import generator_input  # noqa: F401  (public names of this module before the split)
from ..objectives.registry import OBJECTIVES  # flagship / peers: mode -> class owning its nets, losses and step
from .checkpoint import _first_line, numpy_rng_state, read_checkpoint, set_numpy_rng_state, to_plain
from .config import TrainConfig, critic_schedule, lr_schedule_factor
from .replay import ReplayBuffer

# Settings a resumed run may change (recorded in the checkpoint's ``config_history``); any other difference is
# another run and is refused.
RESUME_FREE = ("steps", "lr", "d_lr", "lr_decay_from", "lr_decay_to", "max_loss", "max_param",
               "amp", "channels_last")  # numerics on CUDA (bf16, layout): a change is said, not refused
RESUME_FREE_SILENT = ("out_dir", "device", "num_workers", "checkpoint_every", "sample_every", "log_every", "compile")


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


class Trainer:
    """What every mode shares: the loop, data streams, checkpoints, exact resume, logging, the NaN guard, DDP and the
    replay pools. The mode's networks, losses and step are its objective's (``objectives/study.py``; flagship, pix2pix
    and BicycleGAN in ``objectives/flagship.py`` and ``objectives/peers.py``). Build, then ``fit()``; resumes from
    ``out_dir/checkpoint.pt`` if present."""

    def __init__(self, cfg: TrainConfig, data: dict[str, Dataset], val: Dataset | None = None, resume: bool = True):
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        self.out = Path(cfg.out_dir)
        self.data, self.val = data, val
        torch.manual_seed(cfg.seed)
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.rank, self.world = distributed_info()
        self.objective = None  # the mode's objective, set by _build_nets
        self.nets = self._build_nets()
        self.tn = self.nets  # the modules training steps call: DDP-wrapped in fit() when running under torchrun
        self.opts = {name: self._optimizer(name) for name in self.trainable}
        self.step = 0
        self.history: list[dict] = []
        self.positions: dict[str, int] = {}  # batches consumed per data stream (exact resume)
        # one pool per process, seeded apart; a memmap pool gets one file per process
        memmap = cfg.replay_memmap or None
        if memmap and self.world > 1:
            memmap = str(Path(memmap).with_name(f"{Path(memmap).stem}.rank{self.rank}{Path(memmap).suffix}"))
        self.replay = ReplayBuffer(cfg.replay_size, cfg.seed + 7919 * self.rank, memmap)
        self.config_history: list[dict] = []  # settings changed on resume: {"step", "changed": {key: [old, new]}}
        self._ckpt_stamp = None  # (inode, size, mtime) of the checkpoint this trainer last loaded or wrote
        self.ckpt_path = self.out / "checkpoint.pt"
        self._streams: dict = {}
        if resume and self.ckpt_path.exists():
            self._load(self.ckpt_path)
        elif cfg.init_from:
            self._init_from(cfg.init_from)

    # ---- construction ---------------------------------------------------------------------------------------------
    def _build_nets(self) -> dict:
        mode = self.cfg.mode
        self.objective = OBJECTIVES[mode](self)
        return self.objective.nets

    @property
    def trainable(self) -> list[str]:
        return self.objective.trainable

    def _optimizer(self, name):
        return self.objective.optimizer(name)

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

    @property
    def streams_used(self) -> list[str]:
        """The data streams this run has read batches from (since step 0: positions are kept in the checkpoint)."""
        return sorted(self.positions)

    def _next(self, name: str) -> dict:
        """The next batch of a stream; its position is counted so a resumed run continues with the same batches."""
        if name not in self.data:
            raise ValueError(f"mode {self.cfg.mode!r} needs a '{name}' data stream; given: {sorted(self.data)}")
        if name not in self._streams:
            self._streams[name] = self._stream(name, self.positions.get(name, 0))
        self.positions[name] = self.positions.get(name, 0) + 1
        return next(self._streams[name])

    def _autocast(self):
        on = self.cfg.amp and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=on)

    @property
    def memory_format(self):
        """The networks' layout: NHWC (faster CUDA convolutions) when ``channels_last`` and on CUDA."""
        on = self.cfg.channels_last and self.device.type == "cuda"
        return torch.channels_last if on else torch.contiguous_format

    def place(self, nets: dict) -> dict:
        """Every objective's networks on this trainer's device, in its ``memory_format``."""
        return {k: v.to(self.device).to(memory_format=self.memory_format) for k, v in nets.items()}

    def _mean_over_processes(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` averaged over all processes (the same on every one): decisions that depend on data are taken on it,
        so all processes take the same branch."""
        if self.world == 1:
            return x
        import torch.distributed as dist

        x = x.clone()
        dist.all_reduce(x)
        return x / self.world

    def _any_process(self, flag: bool) -> bool:
        """True if ``flag`` is true on any process (a NaN on one rank must stop them all, not hang the others)."""
        if self.world == 1:
            return flag
        import torch.distributed as dist

        t = torch.tensor([float(flag)], device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def _diverged(self, what: str, step: int):
        kept = f"last good checkpoint kept at {self.ckpt_path}" if self.ckpt_path.exists() else \
            "no checkpoint was written yet"
        return NonFiniteLossError(f"run {self.out}: {what} at step {step} (diverged); stopped, {kept}; resume with "
                                  f"another lr / max_loss / max_param to go on from it")

    def _check(self, losses: dict):
        """NaN guard on losses; under DDP all processes learn of a bad loss on any of them and stop together."""
        bad = None
        for name, v in losses.items():
            v = float(v.detach()) if torch.is_tensor(v) else float(v)
            if not math.isfinite(v) or abs(v) > self.cfg.max_loss:
                bad = bad or f"loss '{name}' = {v}"
        if self._any_process(bad is not None):
            raise self._diverged(bad or "a loss on another process was non-finite or too large", self.step + 1)

    def _check_params(self):
        """NaN guard on the networks: every parameter finite and within max_param, every buffer finite. Run before
        each checkpoint, so a checkpoint never holds a diverged network (a loss can stay finite while weights blow
        up: tanh outputs saturate)."""
        bad = None
        for name, net in self.nets.items():
            params = [p.detach() for p in net.parameters()]
            buffers = [b.detach() for b in net.buffers() if b.is_floating_point()]
            top = torch.stack([p.abs().amax() for p in params]).amax().item() if params else 0.0
            fin = all(bool(torch.isfinite(b).all()) for b in buffers)
            if not math.isfinite(top) or top > self.cfg.max_param or not fin:
                bad = bad or f"network {name}: largest |parameter| = {top} (max_param {self.cfg.max_param})" + \
                    ("" if fin else ", non-finite buffers")
        if self._any_process(bad is not None):
            raise self._diverged(bad or "a network on another process diverged", self.step)

    # ---- loop -----------------------------------------------------------------------------------------------------
    def fit(self, progress: bool = True) -> list[dict]:
        """Train to ``cfg.steps``. Rank 0 holds the folder's lock meanwhile: a second writer fails clearly."""
        if self.rank != 0:
            return self._fit(progress)
        with FolderLock(self.out, f"training {self.cfg.mode}"):
            if self._stamp() != self._ckpt_stamp:
                raise FolderBusyError(f"{self.ckpt_path}: another run wrote this checkpoint after this trainer was "
                                      f"created; use another out_dir, or create the trainer again to resume it")
            removed = remove_orphan_tmp(self.out)  # temporary files of writes killed mid-way
            if removed:
                print(f"{self.out}: removed {removed} temporary file(s) left by an interrupted run")
            return self._fit(progress)

    def _stamp(self):
        try:
            st = self.ckpt_path.stat()
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _fit(self, progress: bool) -> list[dict]:
        c = self.cfg
        step_fn = self.objective.step
        for net in self.nets.values():
            net.train()
        main = self.rank == 0  # logging, samples and checkpoints on rank 0 only
        progress = progress and main
        writer = self._writer() if main else None
        self._sample_batch = self._fixed_val_batch()
        if hasattr(self.objective, "pretrain") and not self.objective.pretrained:  # cross-encoder
            self.objective.pretrain(progress)
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
                if c.lr_decay_to:
                    self._schedule_lr()
                losses = step_fn()
                self.step += 1
                self.history.append({"step": self.step, **losses})
                if writer and (self.step % c.log_every == 0 or self.step == c.steps):
                    for k, v in losses.items():
                        writer.add_scalar(f"loss/{k}", v, self.step)
                    writer.add_scalar("lr/factor", lr_schedule_factor(c, self.step - 1), self.step)
                if main and c.sample_every and self.step % c.sample_every == 0:
                    self.save_samples()
                if (c.checkpoint_every and self.step % c.checkpoint_every == 0) or self.step == c.steps:
                    self.save()  # every process: each saves its replay pool
                if self.step % c.log_every == 0:
                    self._check_params()
                bar.set_postfix({k: f"{v:.3f}" for k, v in losses.items()})
                bar.update(1)
        if writer:
            writer.add_scalar("time/seconds_this_session", time.perf_counter() - t0, self.step)
            writer.close()
        return self.history

    def _schedule_lr(self):
        """Every optimizer's rate for the next step: its configured rate times ``lr_schedule_factor``."""
        f = lr_schedule_factor(self.cfg, self.step)
        for name, opt in self.opts.items():
            for g in opt.param_groups:
                g["lr"] = self.objective.lr_of(name) * f

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
            return {k: torch.stack([it[k] for it in items]).to(self.device) for k in keys if k in items[0]}
        src_d = self.data.get("synthetic") or self.data.get("paired") if self.cfg.buffers else \
            self.data.get("synthetic") or self.val or self.data.get("paired")  # a buffers run: sets with buffers
        src_i = self.val or self.data.get("paired") or self.data.get("real")
        b = first(src_d, ("depth", "mask", "buffers"))
        b["image"] = first(src_i, ("image",))["image"]
        k = min(len(b["depth"]), len(b["image"]))
        return {key: v[:k] for key, v in b.items()}

    def generate(self, depth, mask, image=None, z=None, buffers=None):
        """Generated images (B, C, H, W) in [-1, 1] for depth maps (B, 1, H, W) and masks (and the attribute
        ``buffers`` (B, 3 n, H, W) in [0, 1] a buffers run reads); a generator with an appearance code uses
        z = E(image) if an image is given, else z (or 0)."""
        return self.objective.generate(depth, mask, image, z, buffers)

    def save_samples(self):
        b = self._sample_batch
        fake = self.generate(b["depth"], b["mask"], b["image"], buffers=b.get("buffers"))
        rows = [b["depth"].expand(-1, self.cfg.out_channels, -1, -1), (fake + 1) / 2, (b["image"] + 1) / 2]
        if "buffers" in b:  # the first buffer (the appearance colour) under the depth
            rows.insert(1, b["buffers"][:, :3].expand(-1, self.cfg.out_channels, -1, -1) if self.cfg.out_channels
                        == 3 else b["buffers"][:, :1])
        grid = image_grid(torch.cat(rows).clamp(0, 1), ncol=len(fake))
        atomic_write_bytes(self.out / "samples" / f"step_{self.step:06d}.png", png_bytes(to_uint8(grid)))

    # ---- checkpoints ----------------------------------------------------------------------------------------------
    def state(self) -> dict:
        return {"config": asdict(self.cfg), "step": self.step, "history": self.history,
                "positions": dict(self.positions), **getattr(self.objective, "state", dict)(),
                "replay_pools": {"world": self.world} if self.replay.size else None,  # files beside the checkpoint
                "config_history": self.config_history,
                "nets": {k: v.state_dict() for k, v in self.nets.items()},
                "opts": {k: v.state_dict() for k, v in self.opts.items()},
                "rng": {"torch": torch.get_rng_state(), "numpy": numpy_rng_state(), "python": random.getstate(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}}

    def _pool_prefix(self, rank: int, step: int) -> Path:
        return self.out / "replay" / f"rank{rank}.step{step:08d}"

    def save(self, path=None):
        """Write the checkpoint atomically (never a half-written file under the final name). Called by every process:
        each first writes its replay pool beside the checkpoint (``replay/rank<r>.step<s>.*``, not inside it: a big
        pool would need its size in RAM twice), then rank 0 writes the checkpoint and drops older pools. The networks
        are checked first: a diverged network is never saved."""
        self._check_params()
        if self.replay.size:
            self.replay.save(self._pool_prefix(self.rank, self.step))
            if self.world > 1:
                import torch.distributed as dist

                dist.barrier()  # every pool is on disk before the checkpoint that refers to them
        if self.rank != 0:
            return
        buf = io.BytesIO()
        torch.save(to_plain(self.state()), buf)  # tensors and plain values: read back with weights_only=True
        atomic_write_bytes(path or self.ckpt_path, buf.getvalue())
        if path is None and self.cfg.snapshot_every and self.step % self.cfg.snapshot_every == 0:
            atomic_write_bytes(self.out / "snapshots" / f"step_{self.step:06d}.pt", buf.getvalue())
        atomic_write_json(self.out / "config.json", asdict(self.cfg))
        if path is None:
            self._ckpt_stamp = self._stamp()
            for old in (self.out / "replay").glob("rank*.step*.*"):
                if int(old.name.split(".step")[1].split(".")[0]) < self.step:
                    old.unlink(missing_ok=True)

    def _load_pool(self, path, ck):
        """This process's replay pool of the checkpoint's step (or, from checkpoints of before pools were kept beside
        them, the pool inside the checkpoint)."""
        prefix = self._pool_prefix(self.rank, ck["step"])
        if ck.get("replay_pools"):
            if Path(f"{prefix}.pt").exists():
                self.replay.load(prefix)
            elif self.rank < ck["replay_pools"]["world"]:
                raise ValueError(f"{prefix}.pt: replay pool of {path} (step {ck['step']}) is missing; restore it or "
                                 f"start over in a new out_dir")
            # else: a process the saved run did not have starts with an empty pool
        elif ck.get("replay") is not None and self.rank == 0:
            self.replay.load_state_dict(ck["replay"])

    def _init_from(self, path):
        """Start from another run's networks, optimizer moments and objective state (``cfg.init_from``), keeping
        this run's learning rates; recorded in ``config_history`` with the source's step and configuration."""
        ck = read_checkpoint(path, self.device)
        nets = ck["nets"]
        if set(nets) != set(self.nets):
            raise ValueError(f"{path}: its networks {sorted(nets)} are not this run's {sorted(self.nets)}")
        self._check_layout(path, ck)  # a damaged source is named in one line, as a resume's checkpoint is
        opts = ck["opts"]
        try:
            for k, v in nets.items():
                self.nets[k].load_state_dict(v)
        except RuntimeError as e:
            raise ValueError(f"{path}: its network shapes differ from this run's configuration "
                             f"({str(e).strip().splitlines()[0]})") from e
        for k, v in opts.items():
            lrs = [g["lr"] for g in self.opts[k].param_groups]
            try:
                self.opts[k].load_state_dict(v)
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{path}: optimizer {k} of the checkpoint does not fit this configuration's "
                                 f"networks ({type(e).__name__}: {_first_line(e)})") from e
            self._check_optimizer_state(path, k)
            for g, lr in zip(self.opts[k].param_groups, lrs):
                g["lr"] = lr
        if hasattr(self.objective, "load_state"):
            self.objective.load_state(ck)
        self.config_history.append({"step": 0, "init_from": str(path), "source_step": ck["step"],
                                    "source_config": ck["config"]})

    def _load(self, path, training: bool = True):
        """Restore a run from its checkpoint. ``training=False`` (``load_run``: apply, notebooks) leaves the replay
        pools alone: a running trainer may own them."""
        try:
            ck = read_checkpoint(path, self.device)
        except ValueError as e:
            raise ValueError(f"{e}{'' if 'convert' in str(e) else '; delete it to start over'}") from e
        self._check_layout(path, ck)
        saved = ck["config"]
        mine = asdict(self.cfg)
        # keys missing from an older checkpoint take their defaults; settings of a switch that is off in both runs
        # do not matter (the adaptive schedule's thresholds changed default when it became the original's)
        unused = {k for k in ("adaptive_low", "adaptive_high", "adaptive_max_d")
                  if not saved.get("adaptive") and not mine["adaptive"]}
        # a setting newer than the checkpoint: the run was made with its default (the behaviour before it existed)
        defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
        saved = {**{k: v for k, v in defaults.items() if v is not None}, **saved}
        differ = {k for k in mine if k not in RESUME_FREE + RESUME_FREE_SILENT and k not in unused and k in saved
                  and saved[k] != mine[k]}
        # a critic schedule at the loss's default (the command line's, unless given): the run keeps its own (runs
        # started before the losses had their schedules stored n_critic 1 for wgan); said in config_history
        kept = {k: [saved[k], v] for k, v in critic_schedule(self.cfg.mode, self.cfg.gan_loss).items()
                if k in differ and mine[k] == v}
        for k in kept:
            setattr(self.cfg, k, saved[k])
            mine[k] = saved[k]
        differ -= set(kept)
        if differ:
            raise ValueError(f"{path}: checkpoint was made with another configuration ({sorted(differ)}); "
                             f"use a new out_dir or the same settings (a resume may change {', '.join(RESUME_FREE)})")
        if training and ck["step"] > self.cfg.steps:  # fit() would stop at once and say nothing
            raise ValueError(f"{path}: the checkpoint is at step {ck['step']}, past this run's steps={self.cfg.steps}: "
                             f"nothing would be trained; give steps > {ck['step']} (--steps) to go on from it, or use "
                             f"a new out_dir")
        self.config_history = list(ck.get("config_history", []))
        if kept and training:
            self.config_history.append({"step": ck["step"], "kept_from_checkpoint": kept})
        changed = {k: [saved[k], mine[k]] for k in RESUME_FREE if k in saved and saved[k] != mine[k]}
        if changed and training:
            self.config_history.append({"step": ck["step"], "changed": changed})
        for k, v in ck["nets"].items():
            try:
                self.nets[k].load_state_dict(v)
            except RuntimeError as e:  # shapes or names differ: torch's message, on one line
                detail = "; ".join(x.strip() for x in str(e).strip().splitlines()[1:] if x.strip()) or _first_line(e)
                raise ValueError(f"{path}: network {k} of the checkpoint does not fit this configuration's {k} "
                                 f"({detail[:400]})") from None
        for k, v in ck["opts"].items():
            lrs = [g["lr"] for g in self.opts[k].param_groups]  # this run's learning rates, not the saved ones
            try:
                self.opts[k].load_state_dict(v)
            except (ValueError, KeyError, TypeError, RuntimeError) as e:
                raise ValueError(f"{path}: optimizer {k} of the checkpoint does not fit this configuration's "
                                 f"networks ({type(e).__name__}: {_first_line(e)})") from None
            self._check_optimizer_state(path, k)
            for g, lr in zip(self.opts[k].param_groups, lrs):
                g["lr"] = lr
        self.step, self.history = ck["step"], ck["history"]
        self.positions = dict(ck.get("positions", {}))
        if training and self.replay.size:
            self._load_pool(path, ck)
        if hasattr(self.objective, "load_state"):
            self.objective.load_state(ck)
        self._ckpt_stamp = self._stamp()
        try:
            torch.set_rng_state(ck["rng"]["torch"].cpu())
            set_numpy_rng_state(ck["rng"]["numpy"])
            random.setstate(ck["rng"]["python"])
            if ck["rng"]["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(ck["rng"]["cuda"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise ValueError(f"{path}: not a usable checkpoint: its random-number state cannot be restored "
                             f"({type(e).__name__}: {_first_line(e)})") from None

    def _check_layout(self, path, ck: dict):
        """The entries a restore reads, each of the right kind, with this configuration's networks and optimizers: a
        damaged or foreign checkpoint is refused in one line that names it, instead of a KeyError, or networks left
        at their random initialisation without a word (a ``nets`` entry without one of them)."""
        for k, kind in (("config", dict), ("nets", dict), ("opts", dict), ("step", int), ("history", list),
                        ("rng", dict)):
            v = ck.get(k)
            if not isinstance(v, kind) or isinstance(v, bool):
                got = "missing" if k not in ck else f"of type {type(v).__name__}"
                raise ValueError(f"{path}: not a usable checkpoint: its {k!r} entry is {got} (expected "
                                 f"{kind.__name__})")
        if ck["step"] < 0:
            raise ValueError(f"{path}: not a usable checkpoint: step {ck['step']}")
        for k, mine in (("nets", self.nets), ("opts", self.opts)):
            if set(ck[k]) != set(mine):
                what = "networks" if k == "nets" else "optimizers"
                raise ValueError(f"{path}: its {what} {sorted(ck[k])} are not this configuration's {sorted(mine)} "
                                 f"(mode {self.cfg.mode!r}); a damaged checkpoint or one of another mode")
            bad = [n for n, v in ck[k].items() if not isinstance(v, dict)]
            if bad:
                raise ValueError(f"{path}: not a usable checkpoint: {k}[{bad[0]!r}] is of type "
                                 f"{type(ck[k][bad[0]]).__name__}, not a state dict")
        missing = [k for k in ("torch", "numpy", "python", "cuda") if k not in ck["rng"]]
        if missing:
            raise ValueError(f"{path}: not a usable checkpoint: its random-number state lacks {missing}")

    def _check_optimizer_state(self, path, name: str):
        """Every per-parameter tensor of a loaded optimizer state (Adam's moments, RMSProp's averages) has its
        parameter's shape: torch loads them by position and would fail only at the first step."""
        opt = self.opts[name]
        for i, p in enumerate(q for g in opt.param_groups for q in g["params"]):
            for key, v in opt.state.get(p, {}).items():
                if torch.is_tensor(v) and v.dim() > 0 and v.shape != p.shape:
                    raise ValueError(f"{path}: optimizer {name} of the checkpoint does not fit this configuration's "
                                     f"networks: {key} of parameter {i} has shape {tuple(v.shape)}, the parameter "
                                     f"{tuple(p.shape)}")


def device_problem(name: str, option: str = "--device") -> str:
    """Why device ``name`` cannot be used on this machine ("" if it can): not a device name, or a CUDA device on a
    PyTorch built without CUDA or a machine without that GPU (else the first tensor moved there raises).
    ``option``: how the message names the setting."""
    if name == "auto":
        return ""
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        return f"{option} {name!r}: not a device name; use auto, cpu, cuda or cuda:N"
    if dev.type == "cuda":
        if torch.version.cuda is None:
            return f"{option} {name}: this PyTorch ({torch.__version__}) is built without CUDA; use cpu or auto"
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            return f"{option} {name}: no CUDA GPU is available on this machine; use cpu or auto"
        if dev.index is not None and dev.index >= n:
            return f"{option} {name}: this machine has {n} CUDA GPU(s), cuda:0 to cuda:{n - 1}"
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            return f"{option} {name}: MPS is not available on this machine; use cpu or auto"
    elif dev.type != "cpu":
        return f"{option} {name}: training and loading run on cpu, cuda[:N], mps or auto"
    return ""


def load_run(path, device: str = "cpu") -> Trainer:
    """Rebuild a run (networks, optimizers, step, history) from its checkpoint file alone; loads on CPU by default."""
    path = Path(path)
    problem = device_problem(device, "device")
    if problem:  # before the checkpoint is blamed for it, or the first tensor moved there raises
        raise ValueError(f"{path}: cannot be loaded on {problem}")
    ck = read_checkpoint(path)
    try:
        cfg = TrainConfig.from_dict({**ck["config"], "device": device})
    except Exception as e:
        raise ValueError(f"{path}: not a readable checkpoint ({type(e).__name__}: {_first_line(e)})") from e
    cfg.out_dir = str(path.parent)
    t = Trainer(cfg, data={}, resume=False)
    t._load(path, training=False)
    for net in t.nets.values():
        net.eval()
    return t


def synthetic_distribution(syn) -> dict:
    """How a set of synthetic inputs (a ``RenderedDepthDataset``) was drawn: identity components, pose and expression
    sources (``fitted`` = rows of the photos' fitted table, named by ``table``; ``jitter`` / ``neutral``), seed."""
    c = syn.config
    return {"n": c.n, "seed": c.seed, "n_components": c.n_components, "truncation": c.truncation,
            "pose": c.pose_source, "expressions": c.expression_source, "table": c.table,
            "pose_jitter": asdict(c.pose) if c.pose_source == "jitter" else None}


def input_convention(render, paired_depth: str, synthetic=None) -> dict:
    """What a checkpoint's generator expects as input: the depth maps' ``RenderConfig`` (resolution, framing and
    window, depth mode and range, region, ...; ``apply`` checks it), where the paired depth came from
    (``PairedConfig.depth_source``: ``fitted`` model renders or ``landmarks`` meshes) and, when given, the
    distribution of the synthetic inputs (``synthetic``: their ``RenderedDepthDataset``)."""
    conv = {"render": render.to_dict(), "paired_depth": paired_depth}
    source = f"paired: CelebA depth ({paired_depth})"
    if synthetic is not None:
        conv["synthetic"] = d = synthetic_distribution(synthetic)
        source += (f"; synthetic: face-model renders with the same RenderConfig, identity N(0, I) over "
                   f"{d['n_components']}, pose {d['pose']}, expressions {d['expressions']}")
    conv["source"] = source
    return conv

"""Train one run from the command line; the same command scales to several processes / GPUs with torchrun (DDP).

    python -m frankenstein_utils.train --mode l1 --steps 1000 --out-dir outputs/runs/u
    torchrun --standalone --nproc_per_node 4 -m frankenstein_utils.train --mode l1+gan --steps 10000 ...

Any ``TrainConfig`` field is an option (``--gan-loss wgan-gp``, ``--replay-size 256``, ...). Data: the paired CelebA
set (``--size`` = image size, ``--limit`` photos), synthetic face-model depth maps with the matched framing and the
real pose spread (``--n-synthetic``), and the paired set's photos as the unpaired real photos. ``--batch-size`` is
the total batch over all processes. Rank 0 alone logs and writes checkpoints and samples; every process resumes from
the same checkpoint. NCCL on GPUs, gloo on CPUs.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields

import torch

from .training import TrainConfig, Trainer


def _parser():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        if f.name in ("data", "image_size"):
            continue
        v = getattr(defaults, f.name)
        name = "--" + f.name.replace("_", "-")
        if isinstance(v, bool):
            ap.add_argument(name, type=lambda s: s.lower() in ("1", "true", "yes"), default=v)
        else:
            ap.add_argument(name, type=type(v), default=v)
    ap.add_argument("--size", type=int, default=64, help="image size (paired set and synthetic depth)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N photos (0 = all)")
    ap.add_argument("--n-synthetic", type=int, default=2000)
    ap.add_argument("--cache-dir", default="outputs/cache")
    ap.add_argument("--dump-params", action="store_true", help="write each rank's final parameters (tests)")
    return ap


def main(argv=None):
    a = _parser().parse_args(argv)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    from .datasets import PairedConfig, PairedFaceDataset
    from .depthdata import RenderedDepthDataset
    from .facemodel import load_face_model

    model = load_face_model()
    pcfg = PairedConfig(size=a.size, limit=a.limit or None)
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and rank != 0:  # let rank 0 build the cached paired set first
        torch.distributed.barrier()
    train = PairedFaceDataset("train", pcfg, cache_dir=a.cache_dir, model=model, progress=False)
    val = PairedFaceDataset("val", pcfg, cache_dir=a.cache_dir, model=model, progress=False)
    if world > 1 and rank == 0:
        torch.distributed.barrier()
    data = {"paired": train, "real": train}
    if a.mode not in ("l1", "cvae"):
        data["synthetic"] = RenderedDepthDataset(a.n_synthetic, seed=a.seed, render=train.render_config(model),
                                                 pose=train.pose_jitter(model), model=model).materialize()
    cfg = TrainConfig(**{f.name: getattr(a, f.name) for f in fields(TrainConfig) if f.name not in ("data",
                                                                                                    "image_size")},
                      image_size=a.size, data={"paired": vars(pcfg), "n_synthetic": a.n_synthetic})
    t = Trainer(cfg, data, val)
    if a.dump_params:
        os.makedirs(cfg.out_dir, exist_ok=True)
        torch.save({k: {n: p.clone() for n, p in v.state_dict().items()} for k, v in t.nets.items()},
                   os.path.join(cfg.out_dir, f"params_init_rank{rank}.pt"))
    t.fit(progress=rank == 0)
    if a.dump_params:
        os.makedirs(cfg.out_dir, exist_ok=True)
        torch.save({k: v.state_dict() for k, v in t.nets.items()}, os.path.join(cfg.out_dir, f"params_rank{rank}.pt"))
    if world > 1:
        torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())

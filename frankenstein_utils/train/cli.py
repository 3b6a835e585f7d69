"""Train one run from the command line; the same command scales to several processes / GPUs with torchrun (DDP).

    python -m frankenstein_utils.train --mode l1 --steps 1000 --out-dir outputs/runs/u
    torchrun --standalone --nproc_per_node 4 -m frankenstein_utils.train --mode l1+gan --steps 10000 ...

Any ``TrainConfig`` field is an option (``--gan-loss wgan-gp``, ``--replay-size 256``, ...). Data: the paired CelebA
set (``--size`` = image size, ``--limit`` photos; ``--depth-source fitted`` = depth of the face model fitted to each
photo, ``landmarks`` = the landmark-mesh depth), synthetic face-model depth maps (``--n-synthetic``) framed like the
pairs, with pose and expression drawn from the photos' fits (``--synthetic-pose jitter`` / ``--synthetic-expressions
neutral``: frontal jitter with the photos' spread / neutral face, the earlier inputs), and the paired set's photos as
the unpaired real photos. The checkpoint records the paired depth source and the synthetic distribution. ``--batch-size`` is
the total batch over all processes. Rank 0 alone logs and writes checkpoints and samples; every process resumes from
the same checkpoint. NCCL on GPUs, gloo on CPUs.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import traceback
from dataclasses import asdict, fields

import torch

from ..data.pairs import DEPTH_SOURCES, PairedConfig
from ..io.files import FolderBusyError
from .config import PRESETS, TrainConfig
from .trainer import NonFiniteLossError, Trainer, device_problem, input_convention

EXPECTED_ERRORS = (ValueError, OSError, FolderBusyError, NonFiniteLossError)  # reported in one line (--debug: all)


def parse_bool(s: str) -> bool:
    """A strict boolean: ``--masked-l1 ture`` is an error, not False."""
    v = s.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


def _parser(preset: str | None = None):
    ap = argparse.ArgumentParser(prog="python -m frankenstein_utils.train",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = asdict(TrainConfig(**PRESETS[preset])) if preset else asdict(TrainConfig())
    for f in fields(TrainConfig):
        if f.name in ("data", "image_size", "input_convention"):
            continue
        v = defaults[f.name]
        name = "--" + f.name.replace("_", "-")
        if f.name in ("n_critic", "wgan_burst"):  # unset: the --gan-loss's own schedule (CRITIC_SCHEDULES)
            ap.add_argument(name, type=int, default=None, help="default: that of --gan-loss (wgan, wgan-gp: 5 critic "
                            "steps; wgan: a burst of 100 at the start and every 500th step)")
            continue
        ap.add_argument(name, type=parse_bool if isinstance(v, bool) else type(v), default=v)
    ap.add_argument("--preset", choices=sorted(PRESETS), default=None,
                    help="named settings: 'original' (greyscale 128 px, RMSProp, D lr 1e-4, G lr 1e-3, batch 8), "
                         "'flagship', 'pix2pix', 'bicyclegan' (mode and their papers' settings); options given "
                         "explicitly win")
    ap.add_argument("--size", type=int, default=defaults["image_size"],
                    help="image size (paired set and synthetic depth)")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N photos (0 = all)")
    ap.add_argument("--n-synthetic", type=int, default=2000)
    ap.add_argument("--depth-source", choices=DEPTH_SOURCES, default=PairedConfig.depth_source,
                    help="paired depth: the face model fitted to each photo (default) or its landmark mesh")
    ap.add_argument("--synthetic-pose", choices=("fitted", "jitter"), default="fitted",
                    help="synthetic poses: drawn from the photos' fits (default) or frontal jitter with their spread")
    ap.add_argument("--synthetic-expressions", choices=("fitted", "neutral"), default="fitted",
                    help="synthetic expressions: drawn from the photos' fits (default) or neutral")
    ap.add_argument("--appearance", default="",
                    help="with --buffers: the appearance model file (an unshipped build, which carries every photo's "
                         "coefficients; default: the cached baked or SH build that --buffers names)")
    ap.add_argument("--synthetic-appearance", choices=("from-shape", "free"), default="from-shape",
                    help="with --buffers: synthetic faces' appearance drawn given their shape (default) or freely")
    ap.add_argument("--synthetic-extended", type=float, default=0.25,
                    help="with --buffers: share of synthetic faces spanning the explorer's range (one shape "
                         "component to +-3.5 sigma, yaw to +-30 degrees)")
    ap.add_argument("--cache-dir", default="outputs/cache")
    ap.add_argument("--dump-params", action="store_true", help="write each rank's final parameters (tests)")
    ap.add_argument("--debug", action="store_true", help="show the traceback of expected errors too")
    return ap


def parse_args(argv=None):
    """Options, with a preset's values as the defaults when ``--preset`` is given. Every check that needs no data
    runs here, before the paired set is built (which takes a while)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=sorted(PRESETS), default=None)
    preset = pre.parse_known_args(argv)[0].preset
    ap = _parser(preset)
    a = ap.parse_args(argv)
    if a.limit < 0 or a.n_synthetic < 1:
        ap.error(f"--limit must be >= 0 and --n-synthetic >= 1, got {a.limit} and {a.n_synthetic}")
    if not 0 <= a.synthetic_extended <= 1:
        ap.error(f"--synthetic-extended must be in [0, 1], got {a.synthetic_extended}")
    problem = device_problem(a.device)
    if problem:
        ap.error(problem)
    try:
        cfg = TrainConfig(**{f.name: getattr(a, f.name) for f in fields(TrainConfig)
                             if f.name not in ("data", "image_size", "input_convention")}, image_size=a.size)
    except ValueError as e:
        ap.error(str(e))
    return a, cfg


def main(argv=None):
    a, cfg = parse_args(argv)
    try:
        return run(a, cfg)
    except EXPECTED_ERRORS as e:
        if a.debug:
            traceback.print_exc()
        print(f"train: error: {e}", file=sys.stderr)
        return 1


def synthetic_inputs(train, a, seed: int, model):
    """The synthetic inputs of a run (a ``RenderedDepthDataset``, not yet rendered): ``train.synthetic``, i.e. the
    pairs' framing and depth convention, identity ~ N(0, I), pose and expression as ``--synthetic-pose`` /
    ``--synthetic-expressions`` say (default: drawn from the photos' fits, like the fitted pairs)."""
    return train.synthetic(a.n_synthetic, seed=seed, model=model, pose=a.synthetic_pose,
                           expressions=a.synthetic_expressions)


def buffers_appearance(a, cfg: TrainConfig, paired):
    """The appearance model a buffers run renders with: ``--appearance`` or the cached build of the light its
    buffers need (SH for albedo/shading, else baked)."""
    from ..data.appearance_build import default_path
    from ..facemodel.appearance import AppearanceModel

    light = "sh" if {"albedo", "shading"} & set(cfg.buffers.split(",")) else "baked"
    path = a.appearance or default_path(light, a.cache_dir, paired)
    if not __import__("os").path.exists(path):
        raise ValueError(f"{path}: no appearance model; build it with python -m frankenstein_utils.data.appearance_build build"
                         + (" --light sh" if light == "sh" else ""))
    return AppearanceModel.load(path)


def run(a, cfg: TrainConfig) -> int:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return _run(a, cfg, world)
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    try:
        code = _run(a, cfg, world)
        # Every process waits until all have written their files, then the process group goes down while the
        # interpreter is whole: _run's trainer and its DDP wrappers (which hold the group) are gone by now
        # (gc.collect for their cycles). A group left to interpreter exit let one rank abort after a finished run
        # ("terminate called without an active exception", SIGABRT) while rank 0 still saved its checkpoint.
        dist.barrier()
        return code
    finally:
        gc.collect()
        dist.destroy_process_group()


def _run(a, cfg: TrainConfig, world: int) -> int:
    from ..data.pairs import PairedFaceDataset
    from ..facemodel.model import load_face_model

    model = load_face_model()
    pcfg = PairedConfig(size=cfg.image_size, limit=a.limit or None, grayscale=cfg.out_channels == 1,
                        depth_source=a.depth_source)
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and rank != 0:  # let rank 0 build the cached paired set first
        torch.distributed.barrier()
    train = PairedFaceDataset("train", pcfg, cache_dir=a.cache_dir, model=model, progress=False)
    val = PairedFaceDataset("val", pcfg, cache_dir=a.cache_dir, model=model, progress=False)
    app = paired_buffers = None
    if cfg.buffers:  # rank 0 renders (and caches) the pairs' buffers first
        from ..data.buffers import paired_buffer_set

        app = buffers_appearance(a, cfg, train)
        paired_buffers = paired_buffer_set(train, app, model, cfg.appearance_k, cfg.buffers, a.cache_dir,
                                           progress=rank == 0, supersample=cfg.buffers_supersample)
    if world > 1 and rank == 0:
        torch.distributed.barrier()
    data = {"paired": paired_buffers or train, "real": train}
    syn = synthetic_inputs(train, a, cfg.seed, model)
    if cfg.buffers:
        from ..data.buffers import synthetic_buffer_set

        if cfg.mode not in ("l1", "cvae"):
            data["synthetic"] = synthetic_buffer_set(a.n_synthetic, app, model, cfg.appearance_k, cfg.buffers,
                                                     train.render_config(model), train.face_params(), cfg.seed,
                                                     a.synthetic_appearance, a.synthetic_extended, progress=rank == 0,
                                                     supersample=cfg.buffers_supersample)
    elif cfg.mode not in ("l1", "cvae"):
        data["synthetic"] = syn.materialize()
    cfg.data = {"paired": vars(pcfg), "n_synthetic": a.n_synthetic}
    # recorded for the supervised modes too: the inputs the generator is meant for
    cfg.input_convention = input_convention(train.render_config(model), pcfg.depth_source, syn)
    if cfg.buffers:
        cfg.input_convention["buffers"] = {"paired": paired_buffers.meta,
                                           "synthetic": data["synthetic"].meta if "synthetic" in data else None}
    t = Trainer(cfg, data, val)
    if a.dump_params:
        os.makedirs(cfg.out_dir, exist_ok=True)
        torch.save({k: {n: p.clone() for n, p in v.state_dict().items()} for k, v in t.nets.items()},
                   os.path.join(cfg.out_dir, f"params_init_rank{rank}.pt"))
    t.fit(progress=rank == 0)
    if a.dump_params:
        os.makedirs(cfg.out_dir, exist_ok=True)
        torch.save({k: v.state_dict() for k, v in t.nets.items()}, os.path.join(cfg.out_dir, f"params_rank{rank}.pt"))
    return 0

"""The flagship's ablation and its peers, retrained at one short equal budget and scored at one N."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from ..evaluation.measures import checkerboard_score
from ..objectives.registry import PEER_PRESETS as PRESETS

# ablations: one choice changed from the flagship each
ABLATIONS = {
    "flagship": {},
    "-spade (z only, AdaIN)": dict(fs_modulation="adain"),
    "-resize (transposed conv)": dict(fs_upsample="transpose"),
    "-deep (bottleneck 16 px)": dict(fs_bottleneck=16),
    "-multiscale D (1 scale)": dict(fs_scales=1),
    "-R1": dict(fs_r1=0.0),
    "-DiffAugment": dict(fs_diffaug=""),
    "-feature matching": dict(feature_matching=0.0),
    "-latent regression": dict(latent_weight=0.0),
    "hinge -> non-saturating": dict(gan_loss="log"),
    "-EMA (raw G weights)": dict(fs_ema=0.0),
}


def preset(name: str, **overrides) -> dict:
    """TrainConfig keyword arguments of a named model (``flagship``, ``pix2pix``, ``bicyclegan``)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return {**PRESETS[name], **overrides}


# ---- the ablation and peer study (short runs at one equal budget) ---------------------------------------------------
def study_data(size: int = 64, n_synthetic: int = 2000, seed: int = 0, cache_dir="outputs/cache", limit=None):
    """The streams every study run trains on (as ``train/cli.py`` builds them): paired CelebA (depth of the fitted face
    model), the same training photos as unpaired reals, face-model depth with the paired set's framing, pose and
    expression drawn from the photos' fits (``train.synthetic``)."""
    from ..data.pairs import PairedConfig, PairedFaceDataset
    from ..facemodel.model import load_face_model

    model = load_face_model()
    train = PairedFaceDataset("train", PairedConfig(size=size, limit=limit), cache_dir=cache_dir, model=model,
                              progress=False)
    syn = train.synthetic(n_synthetic, seed=seed, model=model).materialize()
    return model, train, {"paired": train, "real": train, "synthetic": syn}


def run_study(out_dir, names: list[str], steps: int, n_eval: int = 500, progress: bool = False, rescore: bool = False,
              workers: int | None = None, n_test: int | None = None, cache_dir="outputs/cache",
              limit: int | None = None,
              **common) -> dict:
    """Train each named run (``flagship``, an ``ABLATIONS`` key, ``pix2pix``, ``bicyclegan``) for ``steps`` with the
    ``common`` settings, then score it with the evaluation's dlib judges at one N (``evaluation.context.build_context``,
    judges only): ``n_eval`` synthetic inputs from the fitted distribution with z ~ N(0, I), against all test photos
    (``n_test``: the first that many, for a quick check only): KID x 10^3 on descriptors (the headline, unbiased at
    any N) with its standard error, NME against the face model's landmarks, detection, diversity share, and the
    checkerboard score beside the test photos'. Results (and wall times) go to ``out_dir/results.json`` after every
    run; finished runs are not redone (``rescore``: their checkpoints are scored again). ``limit``: the first that
    many photos only (a smoke test)."""
    from ..data.pairs import PairedConfig, PairedFaceDataset
    from ..evaluation import context as EV
    from ..train.config import TrainConfig
    from .runner import run_each

    size = common.get("image_size", 64)
    model, train, data = study_data(size, cache_dir=cache_dir, limit=limit)
    test = PairedFaceDataset("test", PairedConfig(size=size, limit=limit), cache_dir=cache_dir, model=model,
                             progress=False)
    ctx = EV.build_context(model, train, test, n_synthetic=n_eval, n_embed=n_eval, n_ids=2, n_poses=2,
                           judges_only=True, n_test=n_test, workers=workers, cache_dir=cache_dir)
    ref_cb = checkerboard_score(ctx.real_test)

    def score(tr):
        imgs, r = EV.score_at_one_n(ctx, EV.generator_fn(tr))
        return {"kid": 1e3 * r["kid"], "kid_se": 1e3 * r["kid_se"], "nme": r["nme"], "detection": r["detection"],
                "diversity_share": r["diversity_share"], "checkerboard": checkerboard_score(imgs),
                "reference_checkerboard": ref_cb, "n": r["n"], "n_reference": r["n_reference"],
                "inputs": "evaluation.build_context: identity N(0, I) over 15 components, pose and expression drawn "
                          "from the training photos' fits, z ~ N(0, I)"}

    def config_of(name, folder):
        kw = preset(name) if name in PRESETS else {**PRESETS["flagship"], **ABLATIONS[name]}
        return TrainConfig(**{**kw, **common, "steps": steps, "out_dir": str(folder)})

    def score_run(trainer):
        return {**score(trainer), "params_G": sum(p.numel() for p in trainer.nets["G"].parameters())}

    return run_each(names, config_of, data, out_dir, score=score_run, rescore=rescore, progress=progress)


STUDY_SMALL = dict(image_size=64, width=8, d_width=8, encoder_width=8, batch_size=8, checkpoint_every=100,
                   sample_every=100, log_every=10)  # the short equal budget of the flagship card's ablation


def main(argv=None):
    """python -m frankenstein_utils.study.ablation OUT --steps 250 [--names NAME ...]: the flagship's ablations and
    peers at one short budget (``STUDY_SMALL``), each scored at one N (``run_study``)."""
    import argparse

    names = ["flagship", *ABLATIONS, "pix2pix", "bicyclegan"]
    ap = argparse.ArgumentParser(prog="python -m frankenstein_utils.study.ablation", description=main.__doc__)
    ap.add_argument("out", help="folder of the runs and results.json (resumes: finished runs are kept)")
    ap.add_argument("--steps", type=int, default=250)
    ap.add_argument("--names", nargs="+", default=names, metavar="NAME",
                    help=f"runs to train (default: all): {', '.join(repr(n) for n in names)}")
    ap.add_argument("--n-eval", type=int, default=500, help="generated faces scored per run (one N for all)")
    ap.add_argument("--workers", type=int, default=1, help="processes for the dlib judges")
    ap.add_argument("--rescore", action="store_true", help="score finished runs' checkpoints again")
    a = ap.parse_args(argv)
    bad = [n for n in a.names if n not in names]
    if bad:
        ap.error(f"unknown run(s) {bad}; choose from {names}")
    torch.set_num_threads(1)
    res = run_study(a.out, a.names, a.steps, n_eval=a.n_eval, rescore=a.rescore, workers=a.workers, **STUDY_SMALL)
    for name, r in res.items():
        print(name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()
                     if k not in ("history", "config", "final_losses")}, flush=True)
    return 0


if __name__ == "__main__":
    import sys

    from . import ablation as F  # the registered module, not __main__'s copy

    sys.exit(F.main())

"""The refinement experiments of the study as named variants of ``TrainConfig``, run side by side.

Every variant maps synthetic face-model depth maps (input; ``synthetic_sets``: pose and expression drawn from the
photos' fits by default) to images judged against unpaired real photos; the semi-supervised ones also use the paired
set. ``run_variants`` trains each (resuming if interrupted), keeps going
when one diverges, and writes ``results.json`` that notebook 04 reads.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..io.draws import normal
from ..objectives.registry import PEER_PRESETS as PRESETS
from ..train.config import TrainConfig, supervised_config
from ..train.trainer import Trainer, input_convention
from .ablation import preset
from .runner import run_each

# name -> settings of TrainConfig on top of the base (U generator, PatchGAN discriminator, LSGAN, Adam).
VARIANTS: dict[str, dict] = {
    "supervised-l1": dict(mode="l1"),
    "gan-log": dict(mode="gan", gan_loss="log"),
    "gan-lsgan": dict(mode="gan", gan_loss="lsgan"),
    # The original WGAN schedule is 100 critic steps for the first 25 generator steps and every 500th, else 5;
    # scaled down here to fit short budgets (set wgan_burst=100, wgan_burst_until=25, wgan_burst_every=500 for
    # the original through ``overrides``).
    "gan-wgan-clip": dict(mode="gan", gan_loss="wgan", optimizer="rmsprop", lr=5e-5, n_critic=5, wgan_burst=20,
                          wgan_burst_until=10, wgan_burst_every=100),
    "gan-wgan-gp": dict(mode="gan", gan_loss="wgan-gp", lr=1e-4, beta1=0.0, beta2=0.9, n_critic=5, wgan_burst=0),
    "gan-hinge": dict(mode="gan", gan_loss="hinge", spectral_norm=True),
    "gan+recon": dict(mode="gan+recon"),
    "gan+cycle": dict(mode="gan+recon", full_cycle=True),
    "replay": dict(mode="gan", replay_size=256),
    "adaptive": dict(mode="gan", adaptive=True),
    "l1+gan": dict(mode="l1+gan", l1_weight=10.0),
    "l1+gan+replay+fm": dict(mode="l1+gan", l1_weight=10.0, replay_size=256, feature_matching=1.0),
    "cvae-gan": dict(mode="cvae-gan", l1_weight=10.0),
    "cross-encoder": dict(mode="cross-encoder"),
    "noise-nu": dict(mode="gan", generator="NU"),
    "feature-matching": dict(mode="gan", feature_matching=1.0),
    "bottleneck-kl": dict(mode="gan", bottleneck_kl=0.1),
}


SUPERVISED = ("U", "V", "F", "NU", "cvae")  # notebook 02's models (training.supervised_config)


def model_config(name: str, **settings) -> TrainConfig:
    """The ``TrainConfig`` of any named model of the study: a supervised one (``SUPERVISED``), a variant of notebook 03
    (``VARIANTS``) or a peer preset (``study.ablation.PRESETS``: pix2pix, bicyclegan, flagship), on top of
    ``settings``."""
    if name in SUPERVISED:
        return supervised_config(name, **settings)
    if name in VARIANTS:
        return variant_config(name, **settings)
    if name in PRESETS:
        return TrainConfig(**{**preset(name), **settings})
    raise ValueError(f"unknown model {name!r}; choose from {list(SUPERVISED) + sorted(VARIANTS) + sorted(PRESETS)}")


class _StreamLog(dict):
    """Training streams that remember which ones the trainer asked for."""

    def __init__(self, streams: dict):
        super().__init__(streams)
        self.read: set[str] = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)


def streams_read(name: str, streams: dict, image_size: int = 64) -> set[str]:
    """The streams (``paired``, ``synthetic``, ``real``) that model ``name`` trains on, observed rather than
    declared: two steps of a width-4 copy on ``streams``, in a temporary folder. A model that never reads
    ``paired`` cannot depend on how the pairs were made."""
    import tempfile

    log = _StreamLog(streams)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = model_config(name, steps=2, batch_size=2, width=4, d_width=4, encoder_width=4, z_dim=4,
                           image_size=image_size, pretrain_steps=1, seed=0, out_dir=tmp, sample_every=0,
                           checkpoint_every=10 ** 6, log_every=1)
        Trainer(cfg, log, resume=False).fit(progress=False)
    return log.read


def synthetic_sets(train, model, n: int, seed: int = 0, pose: str = "fitted", expressions: str = "fitted",
                   n_fixed: int = 8):
    """The study's synthetic inputs, not yet rendered: ``n`` training inputs and ``n_fixed`` fixed ones for the
    sample grids (another seed), both ``train.synthetic``: the pairs' framing and depth convention, identity
    ~ N(0, I), pose and expression drawn from the photos' fits (``"fitted"``, like the fitted pairs) or frontal
    jitter / neutral (``pose="jitter"``, ``expressions="neutral"``: the earlier inputs)."""
    kw = dict(model=model, pose=pose, expressions=expressions)
    return train.synthetic(n, seed=seed, **kw), train.synthetic(n_fixed, seed=seed + 12345, **kw)


def variant_config(name: str, overrides: dict | None = None, **base) -> TrainConfig:
    """Base settings (budget, size, seed, ...), then the variant's own, then ``overrides[name]`` if given."""
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}; choose from {sorted(VARIANTS)}")
    return TrainConfig(**{**base, **VARIANTS[name], **((overrides or {}).get(name, {}))})


@torch.no_grad()
def output_spread(images: torch.Tensor) -> float:
    """Mean pairwise L1 distance between images (N, C, H, W): near 0 means every input gives the same output."""
    x = images.flatten(1).float()
    d = torch.cdist(x, x, p=1) / x.shape[1]
    n = len(x)
    return float(d.sum() / (n * (n - 1))) if n > 1 else 0.0


def run_variants(names, streams: dict, val, fixed_depth, fixed_mask, out_dir, progress: bool = True,
                 overrides: dict | None = None, **base) -> dict:
    """Train each named variant into ``out_dir/<name>`` (``runner.run_each``); a diverging run is recorded and the
    others go on. Each entry of ``out_dir/results.json`` also holds the output spread on the fixed depth maps."""
    def config_of(name, folder):
        return variant_config(name, overrides, out_dir=str(folder), **base)

    def score(trainer):
        return {"output_spread": output_spread(trainer.generate(fixed_depth.to(trainer.device),
                                                                fixed_mask.to(trainer.device)))}

    return run_each(names, config_of, streams, out_dir, score=score, val=val, progress=progress)


# ---- tables and conclusions of notebooks 02 and 03, computed from the runs ------------------------------------------
BASELINES = ("mean training photo", "linear map of depth")


def supervised_table(runs: dict, train, val, seconds: dict | None = None, seed: int = 0) -> list[dict]:
    """Validation metrics (``evaluation.metric_nets.paired_metrics``: inside the face mask and over the whole image) of
    the two baselines and every supervised run; a cvae run gives two rows (z = E(photo), z ~ N(0, I) seeded by
    ``seed``). ``dB vs mean (mask)`` is a row's masked PSNR minus the mean photo's."""
    from ..evaluation.metric_nets import LinearDepthBaseline, MeanPhotoBaseline, evaluate_paired
    from ..nets.layers import count_parameters

    ti, td, _ = train.tensors()
    vi, vd, vm = val.tensors()
    seconds = seconds or {}
    predictors = {BASELINES[0]: (MeanPhotoBaseline(ti), None), BASELINES[1]: (LinearDepthBaseline(ti, td), None)}
    for name, run in runs.items():
        if "E" in run.nets:
            predictors[f"{name}, z = E(photo)"] = (lambda d, m, i, run=run: run.generate(d, m, i), name)
            predictors[f"{name}, z ~ N(0, I)"] = (lambda d, m, i, run=run: run.generate(
                d, m, z=normal(len(d), run.cfg.z_dim, generator=torch.Generator().manual_seed(seed))), name)
        else:
            predictors[name] = (lambda d, m, i, run=run: run.generate(d, m, i), name)
    rows = []
    for label, (fn, run_name) in predictors.items():
        r = evaluate_paired(fn, vi, vd, vm)
        n_params = sum(count_parameters(n) for n in runs[run_name].nets.values()) if run_name else 0
        rows.append({"model": label, **r, "params": n_params, "train s": round(seconds.get(run_name, 0.0), 1)})
    for r in rows:
        r["dB vs mean (mask)"] = r["psnr_mask"] - rows[0]["psnr_mask"]
    return rows


def supervised_conclusion(rows: list[dict]) -> str:
    """What the supervised table says, in words computed from its numbers (no fixed claims)."""
    by = {r["model"]: r for r in rows}
    plain = [r for r in rows if r["model"] not in BASELINES and ", z " not in r["model"]]
    lines = []
    if plain:
        best = max(plain, key=lambda r: r["dB vs mean (mask)"])
        db, whole = best["dB vs mean (mask)"], best["psnr"] - by[BASELINES[0]]["psnr"]
        verdict = "better than" if db > 0 else "no better than"
        lines.append(f"The best depth-only generator, {best['model']}, is {verdict} the mean training photo inside "
                     f"the face ({db:+.2f} dB) and {whole:+.2f} dB over the whole image; the linear map of depth "
                     f"scores {by[BASELINES[1]]['dB vs mean (mask)']:+.2f} dB.")
    for name in [r["model"][: -len(", z = E(photo)")] for r in rows if r["model"].endswith(", z = E(photo)")]:
        e, n = by[f"{name}, z = E(photo)"], by[f"{name}, z ~ N(0, I)"]
        gain = e["dB vs mean (mask)"] - (max(r["dB vs mean (mask)"] for r in plain) if plain else 0.0)
        lines.append(f"Given the photo's appearance code, {name} scores {e['dB vs mean (mask)']:+.2f} dB ("
                     f"{gain:+.2f} dB against the best depth-only generator): "
                     + ("what depth does not carry (skin tone, lighting, hair, background) is part of the error. "
                        if gain > 0 else "at this budget the appearance code does not help. ")
                     + f"With z ~ N(0, I) it scores {n['dB vs mean (mask)']:+.2f} dB.")
    return "\n\n".join(lines)


def variants_table(results: dict, names) -> list[dict]:
    """One row per variant of ``run_variants``'s results: status, steps, seconds, output spread, final D/G losses."""
    nan = float("nan")
    rows = []
    for name in names:
        r = results[name]
        fl = r.get("final_losses", {})
        rows.append({"variant": name, "status": r["status"], "steps": r.get("steps", 0), "seconds": r.get("wall_s", r.get("seconds")),
                     "output spread": r.get("output_spread", nan), "d_real": fl.get("d_real", nan),
                     "d_fake": fl.get("d_fake", nan), "g_adv": fl.get("g_adv", nan)})
    return rows


def variants_conclusion(results: dict, names) -> str:
    """Which variants finished, diverged or failed, and which gave the least and most varied outputs."""
    ok = [n for n in names if results[n]["status"] == "ok"]
    bad = {n: results[n]["status"] for n in names if results[n]["status"] != "ok"}
    text = f"{len(ok)} of {len(list(names))} variants finished"
    text += ("; " + ", ".join(f"{n} {s}" for n, s in bad.items()) + "." if bad else ".")
    spread = {n: results[n]["output_spread"] for n in ok if "output_spread" in results[n]}
    if len(spread) >= 2:
        lo, hi = min(spread, key=spread.get), max(spread, key=spread.get)
        ref = spread.get("supervised-l1")
        text += (f" Least varied outputs on the fixed depth maps: {lo} (spread {spread[lo]:.3f}"
                 + (f", {spread[lo] / ref:.2f}x the supervised L1 model's" if ref else "") + "); most varied: "
                 f"{hi} ({spread[hi]:.3f}). A spread near 0 means one output for every input (collapse).")
    return text


# ---- the comparison at one equal budget, with curves (shipped as weights/study/<model>.safetensors) ---------------------------
def load_budget_params(path) -> dict:
    """The budget study's parameter file (``notebooks/params/study_budget.yaml``), checked: one clear line on a
    missing or unknown key."""
    import yaml

    path = Path(path)
    try:
        p = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{path}: not a readable parameter file ({type(e).__name__}: {e})") from e
    need = {"steps", "eval_every", "n_eval", "n_synthetic", "settings", "models", "out_dir"}
    if set(p) != need:
        raise ValueError(f"{path}: keys must be {sorted(need)}; missing {sorted(need - set(p))}, "
                         f"unknown {sorted(set(p) - need)}")
    for name in p["models"]:
        model_config(name, **p["settings"])  # raises on an unknown model or setting
    if p["steps"] % p["eval_every"]:
        raise ValueError(f"{path}: steps ({p['steps']}) must be a multiple of eval_every ({p['eval_every']})")
    return p


def budget_study(params: dict, names=None, progress: bool = False, n_kid_reference: int | None = None) -> dict:
    """Every model of ``params['models']`` (or ``names``) at the same budget, each with its curve: KID of dlib
    descriptors against every test photo (or the first ``n_kid_reference``, standardised on as many training photos,
    at least 64; by default as in ``evaluation.context``, so the same measure as the evaluation's at a smaller N),
    face-FD against as many test photos as inputs (biased at this N: kept to compare with older curves), landmark
    error, detection and diversity (``pretrained.scoring.face_scores``) on ``n_eval`` fixed synthetic inputs
    (``pretrained.scoring.fixed_inputs``: identity N(0, I), pose and expression from the photos' fits). Data:
    ``study.ablation.study_data`` (fitted pairs, the training photos as unpaired reals, synthetic inputs from the
    fitted distribution). Writes
    ``out_dir/<model>/curve.json``, ``out_dir/results.json`` and each point's checkpoint
    (``out_dir/<model>/points/``, so that a curve can be scored again without training)."""
    from ..data.pairs import PairedConfig, PairedFaceDataset
    from ..evaluation.context import generator_fn, kid_reference
    from ..evaluation.judges import judges
    from ..evaluation.measures import standardizer
    from ..pretrained.scoring import _analysed_reference, face_scores, fixed_inputs
    from .ablation import study_data

    s = params["settings"]
    size = s.get("image_size", 64)
    model, train, data = study_data(size, params["n_synthetic"], s.get("seed", 0))
    render, pose = train.render_config(model), train.pose_jitter(model)
    syn = train.synthetic(params["n_synthetic"], seed=s.get("seed", 0), model=model)  # its recorded distribution
    params = {**params, "settings": {**s, "data": {"paired": vars(train.config), "n_synthetic": params["n_synthetic"]},
                                     "input_convention": input_convention(render, train.config.depth_source, syn)}}
    d, m, lm, z = fixed_inputs(model, render, pose, params["n_eval"], train=train)
    ref, ref_faces = _analysed_reference(params["n_eval"], size)  # once for every point of every curve
    test = PairedFaceDataset("test", PairedConfig(size=size), model=model, progress=False)
    test_faces, std_faces = kid_reference(judges(), train.tensors()[0], test.tensors()[0][:n_kid_reference],
                                          n_embed=n_kid_reference or 500)
    kid = (test_faces.embeddings, standardizer(std_faces.embeddings))

    def scorer(run):
        f = generator_fn(run)
        imgs = f(d, m, z[:, :f.z_dim] if f.z_dim else None)
        r = face_scores(imgs, lm, ref, ref_faces, kid=kid)
        return {k: r[k] for k in ("kid", "kid_se", "kid_n", "kid_n_reference", "face_fd", "nme", "detection",
                                  "diversity", "reference_diversity")}

    def config_of(name, folder):
        every = params["eval_every"]
        return model_config(name, **{**params["settings"], "steps": params["steps"], "out_dir": str(folder),
                                     "checkpoint_every": every, "sample_every": 0, "log_every": max(every // 10, 1)})

    return run_each(names or params["models"], config_of, data, params["out_dir"], score=scorer,
                    curve_every=params["eval_every"], keep_points=True, progress=progress)


def settled(points: list[dict], key: str, tail: int = 3, tol: float = 0.1) -> bool:
    """Whether a curve has settled: over its last ``tail`` points ``key`` spread by at most ``tol`` of its last
    value."""
    v = [p[key] for p in points[-tail:]]
    if len(v) < tail:
        return False
    spread = (max(v) - min(v)) / max(abs(v[-1]), 1e-9)
    return spread <= tol


def _window_means(points: list[dict], key: str, window: int):
    """(mean of ``key`` over the ``window`` points before the last ``window``, mean over the last ``window``), or None
    for a curve shorter than 2 x window."""
    v = [p[key] for p in points]
    if len(v) < 2 * window:
        return None
    return sum(v[-2 * window:-window]) / window, sum(v[-window:]) / window


def trend(points: list[dict], key: str, window: int = 5) -> float | None:
    """Where a curve is heading: the mean of ``key`` over its last ``window`` points relative to the mean over the
    ``window`` before, minus 1 (-0.1: the last stretch is 10 % lower; for face-FD and NME, still improving). Means of
    several points, so a noisy but flat curve reads near 0 where ``settled`` says no. None below 2 x window points."""
    means = _window_means(points, key, window)
    if means is None:
        return None
    before, last = means
    return float(last / max(before, 1e-9) - 1)


def ranking_agreement(curves: dict, key: str, window: int = 5) -> float | None:
    """Whether the study's ranking has settled even where single curves oscillate: Spearman's rank correlation,
    across models, between the mean of ``key`` over each curve's last ``window`` points and over the ``window``
    before (1: the same order). ``curves``: {model: points}. None with fewer than 3 models or short curves."""
    from scipy.stats import spearmanr

    pairs = [m for m in (_window_means(pts, key, window) for pts in curves.values()) if m is not None]
    if len(pairs) < 3:
        return None
    return float(spearmanr([a for a, _ in pairs], [b for _, b in pairs]).statistic)


def main(argv=None):
    """python -m frankenstein_utils.study.variants PARAMS [--models NAME ...] [--export]: train the budget study of the
    parameter file (resumes where it stopped), then with ``--export`` ship each finished model to
    ``weights/study/<model>.safetensors`` with its model card."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m frankenstein_utils.study.variants", description=main.__doc__)
    ap.add_argument("params")
    ap.add_argument("--models", nargs="+", default=None)
    ap.add_argument("--export", action="store_true")
    ap.add_argument("--machine-note", default="", help="what else ran on the machine (recorded in the cards)")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    try:
        params = load_budget_params(a.params)
    except ValueError as e:
        print(f"study.variants: error: {e}", file=sys.stderr)
        return 1
    res = budget_study(params, a.models, progress=False)
    for k, r in res.items():
        print(k, {x: (round(v, 3) if isinstance(v, float) else v) for x, v in r.items()
                  if x not in ("history", "config", "final_losses", "streams")}, flush=True)
    if a.export:
        from ..pretrained.study_export import export_study

        export_study(a.params, params, a.models, a.machine_note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The refinement experiments of the study as named variants of ``TrainConfig``, run side by side.

Every variant maps synthetic face-model depth maps (input) to images judged against unpaired real photos; the
semi-supervised ones also use the paired set. ``run_variants`` trains each (resuming if interrupted), keeps going
when one diverges, and writes ``results.json`` that notebook 04 reads.
"""
from __future__ import annotations

import json
import time
import traceback
from dataclasses import asdict
from pathlib import Path

import torch

from .fileio import atomic_write_json
from .training import NonFiniteLossError, TrainConfig, Trainer

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
    """Train each named variant into ``out_dir/<name>``; a diverging run is recorded and the others go on.

    Returns and writes ``out_dir/results.json``: per variant the status, message, steps, seconds, final losses,
    the output spread on the fixed depth maps, the checkpoint path and the full config."""
    out_dir = Path(out_dir)
    results = {}
    path = out_dir / "results.json"
    if path.exists():
        results = json.loads(path.read_text())
    for name in names:
        cfg = variant_config(name, overrides, out_dir=str(out_dir / name), **base)
        entry = {"variant": name, "config": asdict(cfg), "checkpoint": str(out_dir / name / "checkpoint.pt")}
        t0 = time.perf_counter()
        trainer = None
        try:
            trainer = Trainer(cfg, streams, val)
            trainer.fit(progress=progress)
            entry["status"] = "ok"
            entry["message"] = ""
        except NonFiniteLossError as e:
            entry["status"], entry["message"] = "diverged", str(e)
        except Exception as e:  # a broken variant must not stop the others; the message says what happened
            entry["status"] = "error"
            entry["message"] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
        entry["seconds"] = round(time.perf_counter() - t0, 1)
        if trainer is not None:
            entry["steps"] = trainer.step
            last = [h for h in trainer.history if h.get("step", 0) > 0][-20:]
            keys = {k for h in last for k in h if k != "step"}
            entry["final_losses"] = {k: sum(h[k] for h in last if k in h) / max(1, sum(k in h for h in last))
                                     for k in keys}
            if entry["status"] == "ok":
                fakes = trainer.generate(fixed_depth.to(trainer.device), fixed_mask.to(trainer.device))
                entry["output_spread"] = output_spread(fakes)
            entry["history"] = trainer.history
        results[name] = entry
        atomic_write_json(path, results)
    return results

"""One runner for every study: each named run trained into its folder, scored, recorded; a failure stops no other.

The 2017 study's variants (``variants.run_variants``), the study at one equal budget with its curves
(``variants.budget_study``) and the flagship's ablation and peers (``ablation.run_study``) are this runner with their
own configs and scorers."""
from __future__ import annotations

import json
import time
import traceback
from dataclasses import asdict, replace
from pathlib import Path

from ..io.files import atomic_write_bytes, atomic_write_json, update_json
from ..train.trainer import NonFiniteLossError, Trainer, load_run


def _plain(obj):
    """``obj`` as JSON reads it back (tuples become lists), so that a stored config compares equal to its run's."""
    return json.loads(json.dumps(obj))


def folder_name(name: str) -> str:
    """A run's folder: its name without spaces, slashes or parentheses (the ablation's names have them)."""
    return name.replace(" ", "_").replace("/", "-").replace("(", "").replace(")", "")


def final_losses(history: list[dict], last: int = 20) -> dict:
    """Mean of each logged loss over the last ``last`` logged steps."""
    rows = [h for h in history if h.get("step", 0) > 0][-last:]
    keys = {k for h in rows for k in h if k != "step"}
    return {k: sum(h[k] for h in rows if k in h) / max(1, sum(k in h for h in rows)) for k in sorted(keys)}


def train_with_curve(cfg, data, score, folder, every: int, val=None, progress: bool = False,
                     keep_points: bool = False):
    """Train ``cfg`` in segments of ``every`` steps (each resumes the last exactly, so together they are one run),
    scoring the generator after each with ``score(trainer) -> dict``. Returns (the last segment's trainer or None
    when every point was already there, the curve); writes ``folder/curve.json``: {"points": [{step, train_s,
    **scores}], "config", "streams"}. Finished points are kept when the run is resumed. ``keep_points``: each
    point's checkpoint is also kept, as ``folder/points/step_<step>.pt``."""
    path = Path(folder) / "curve.json"
    curve = json.loads(path.read_text()) if path.exists() else {"points": []}
    points = curve["points"]
    train_s = points[-1]["train_s"] if points else 0.0
    trainer = None
    for step in range(every, cfg.steps + 1, every):
        if any(p["step"] == step for p in points):
            continue
        t0 = time.perf_counter()
        trainer = Trainer(replace(cfg, steps=step), data, val)
        trainer.fit(progress=progress)
        train_s += time.perf_counter() - t0
        if keep_points:
            keep = Path(folder) / "points" / f"step_{trainer.step:06d}.pt"
            keep.parent.mkdir(exist_ok=True)
            atomic_write_bytes(keep, (Path(folder) / "checkpoint.pt").read_bytes())
        points.append({"step": trainer.step, "train_s": round(train_s, 1), **score(trainer)})
        curve = {"points": points, "config": asdict(trainer.cfg), "streams": trainer.streams_used}
        atomic_write_json(path, curve)
    return trainer, curve


def run_each(names, config_of, data, out_dir, *, score=None, val=None, curve_every: int = 0, rescore: bool = False,
             keep_points: bool = False, progress: bool = False) -> dict:
    """Train each of ``names`` with ``config_of(name, folder) -> TrainConfig`` into ``out_dir/<folder_name(name)>``
    and score the finished generator with ``score(trainer) -> dict``; ``curve_every`` > 0 scores it after every
    that many steps instead (``train_with_curve``; the entry holds the last point; ``keep_points``: with each
    point's checkpoint).

    Each entry of ``out_dir/results.json`` (written after every run): status (``ok``, ``diverged``: a non-finite loss,
    ``error``: any other exception, with its traceback), message, steps, train_s (this call's training), wall_s (its
    training and scoring), final_losses, history, config, checkpoint, and the scores. A run whose entry is ``ok`` with
    the same config is not trained or scored again (``rescore``: its checkpoint is scored again by the current
    ``score``); any other is trained, resuming exactly from its checkpoint. A curve is always resumed (its finished
    points are kept, so a longer ``steps`` extends it). An entry of the older runners without a status (the ablation's)
    counts as done; one without a config is trained again (resuming)."""
    out = Path(out_dir)
    res_path = out / "results.json"
    results = json.loads(res_path.read_text()) if res_path.exists() else {}
    for name in names:
        folder = out / folder_name(name)
        cfg = config_of(name, folder)
        ckpt = folder / "checkpoint.pt"
        old = results.get(name, {})
        same = old.get("config") == _plain(asdict(cfg))  # as JSON gives it back: tuples are lists
        done = old.get("status") == "ok" and same or (old and "status" not in old)  # the old ablation's: no status
        if done and not curve_every:
            if rescore and score is not None:
                old.update(score(load_run(ckpt)))
                results = update_json(res_path, {name: old})
            continue
        entry = {"status": "ok", "message": "", "config": _plain(asdict(cfg)), "checkpoint": str(ckpt)}
        t0 = time.perf_counter()
        trainer = None
        train_s = None
        try:
            if curve_every:
                trainer, curve = train_with_curve(cfg, data, score, folder, curve_every, val, progress,
                                                  keep_points)
                entry.update(curve["points"][-1], streams=curve["streams"])
            else:
                trainer = Trainer(cfg, data, val)
                trainer.fit(progress=progress)
                train_s = round(time.perf_counter() - t0, 1)
                if score is not None:
                    entry.update(score(trainer))
        except NonFiniteLossError as e:
            entry["status"], entry["message"] = "diverged", str(e)
        except Exception as e:  # a broken run must not stop the others; the message says what happened
            entry["status"] = "error"
            entry["message"] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
        entry["wall_s"] = round(time.perf_counter() - t0, 1)
        entry["train_s"] = entry.get("train_s", train_s)  # a curve's point holds the curve's training time
        if trainer is not None:
            entry.update(steps=trainer.step, final_losses=final_losses(trainer.history), history=trainer.history)
        elif curve_every:  # every point was there: what the last call recorded stays
            entry.update({k: old[k] for k in ("steps", "final_losses", "history") if k in old})
        results = update_json(res_path, {name: entry})
    return results

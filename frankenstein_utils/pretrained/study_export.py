"""Exporting the study's trained runs as shipped models with their cards."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from ..render.rasterize import PoseJitter, RenderConfig
from .cards import study_card_sections, write_card, write_study_index
from .scoring import card_numbers
from .shipped import WEIGHTS_DIR, PretrainedGenerator, generator_from_blob, record_checksum, shipped_blob, write_shipped


def from_run(run, render: RenderConfig, pose: PoseJitter) -> PretrainedGenerator:
    """A trained run's sampling generator (G's EMA where there is one) and encoder as a ``PretrainedGenerator``
    (float32, as trained: for scoring checkpoints along a run)."""
    nets = {"G": run.nets.get("G_ema", run.nets["G"]).eval()}
    if "E" in run.nets:
        nets["E"] = run.nets["E"].eval()
    return PretrainedGenerator(nets, run.cfg, render, pose, {}, Path(run.out) / "checkpoint.pt")


def export_study(params_path, params: dict, names=None, machine_note: str = "", weights_dir=None) -> dict:
    """Ship every finished model of the budget study (``study.variants.budget_study``) as
    ``weights/study/<model>.safetensors``
    (G and encoder in float16, no EMA: these objectives keep none) with ``<model>_MODEL_CARD.md``: its curve, the
    card numbers of the shipped weights (``card_numbers``: 64 fixed synthetic inputs), training time and the
    command that retrains it. Returns {model: card}."""
    import os
    import platform

    from ..data.pairs import PairedConfig, PairedFaceDataset
    from ..facemodel.model import load_face_model
    from ..train.config import TrainConfig
    from ..train.trainer import load_run

    model = load_face_model()
    size = params["settings"].get("image_size", 64)
    train = PairedFaceDataset("train", PairedConfig(size=size), model=model, progress=False)
    render, pose = train.render_config(model), train.pose_jitter(model)
    base = asdict(TrainConfig())
    cards = {}
    for name in names or params["models"]:
        run_dir = Path(params["out_dir"]) / name
        curve = json.loads((run_dir / "curve.json").read_text())
        if curve["points"][-1]["step"] != params["steps"]:
            print(f"{name}: not finished ({curve['points'][-1]['step']} of {params['steps']} steps), not shipped")
            continue
        run = load_run(run_dir / "checkpoint.pt")
        path = Path(weights_dir or WEIGHTS_DIR) / "study" / f"{name}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        blob = shipped_blob(run, render, pose, {})  # scored as shipped (float16), before its card is written
        small = card_numbers(generator_from_blob(blob, path), model, train=train)
        cfg = asdict(run.cfg)
        card = {"small_set": small, "curve": curve["points"], "step": run.step, "streams": curve["streams"],
                "n_eval": params["n_eval"],
                "train_s": curve["points"][-1]["train_s"], "data": run.cfg.data,
                "command": f"python -m frankenstein_utils.study.variants {params_path} --models '{name}' --export",
                "changed": {k: v for k, v in cfg.items() if k in base and base[k] != v
                            and k not in ("out_dir", "steps", "input_convention", "data")},
                "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores"
                           f"{' (' + machine_note + ')' if machine_note else ''}, torch {torch.__version__}, "
                           f"1 thread, no GPU"}
        size_b = write_shipped(path, {**blob, "card": card})
        write_card(path.with_name(f"{name}_MODEL_CARD.md"), f"Model card: study/{name} (the study at one "
                   f"equal budget, {run.cfg.image_size} px)", study_card_sections(name, card, size_b, run))
        record_checksum(path)  # its line in the card just written
        cards[name] = card
        print(f"exported {path} ({size_b / 2 ** 10:.0f} KiB): {json.dumps(small, default=float)}")
    write_study_index(Path(weights_dir or WEIGHTS_DIR) / "study", params_path)
    return cards

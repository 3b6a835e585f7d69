"""The shipped models' command line (python -m frankenstein_utils.pretrained): export, evaluate, sweep, rescore."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from ..objectives.base import generator_input
from .cards import card_sections, ship_ablation, write_card
from .scoring import card_numbers, evaluate_for_card, evaluate_shipped, rescore_shipped, sweep_shipped
from .shipped import WEIGHTS_DIR, generator_from_blob, load_pretrained, record_checksum, shipped_blob, write_shipped


def main(argv=None):
    """Export a flagship checkpoint: weights (fp16) + card numbers + MODEL_CARD.md. Usage:
    python -m frankenstein_utils.pretrained CHECKPOINT --name flagship --wall-s SECONDS --command "..." """
    import argparse
    import platform
    import time

    from ..data.pairs import PairedConfig, PairedFaceDataset
    from ..facemodel.model import load_face_model
    from ..train.trainer import load_run

    if argv is None:
        import sys

        argv = sys.argv[1:]
    if argv[:1] == ["rescore"]:  # python -m frankenstein_utils.pretrained rescore [NAME ...]
        rescore_shipped(argv[1:] or None)
        return
    if argv[:1] == ["sweep"]:  # python -m frankenstein_utils.pretrained sweep [NAME ...]
        torch.set_num_threads(1)
        sweep_shipped(argv[1:] or None)
        return
    if argv[:1] == ["evaluate"]:  # python -m frankenstein_utils.pretrained evaluate [NAME ...]
        torch.set_num_threads(1)
        evaluate_shipped(argv[1:] or None)
        return
    if argv[:1] == ["ablation"]:  # python -m frankenstein_utils.pretrained ablation RESULTS --command "..."
        ab = argparse.ArgumentParser(prog="python -m frankenstein_utils.pretrained ablation",
                                     description=ship_ablation.__doc__)
        ab.add_argument("results", help="results.json of python -m frankenstein_utils.study.ablation OUT")
        ab.add_argument("--command", required=True, help="the command that trained and scored it")
        ab.add_argument("--name", default="flagship")
        b = ab.parse_args(argv[1:])
        ship_ablation(b.results, b.command, b.name)
        return
    ap = argparse.ArgumentParser(prog="python -m frankenstein_utils.pretrained",
                                 epilog="python -m frankenstein_utils.pretrained rescore [NAME ...]: recompute the "
                                        "small-set numbers of shipped models (after a change of the scoring); "
                                        "python -m frankenstein_utils.pretrained evaluate [NAME ...]: every shipped "
                                        "model and every control at N = 500 (weights/EVALUATION.md); "
                                        "python -m frankenstein_utils.pretrained ablation RESULTS --command ...: "
                                        "the flagship card's ablation at one N")
    ap.add_argument("checkpoint")
    ap.add_argument("--name", default="flagship")
    ap.add_argument("--wall-s", type=float, required=True, help="training wall time (from the run's log)")
    ap.add_argument("--command", required=True, help="the command that trained it")
    ap.add_argument("--curve", default="", help="JSON file: [{step, wall_s, detection, nme, face_fd}, ...]")
    ap.add_argument("--study", default="", help="results.json of the ablation / peer study")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--machine-note", default="", help="what else ran on the machine while it trained")
    ap.add_argument("--card-only", action="store_true",
                    help="rewrite the shipped model's MODEL_CARD.md from its stored card numbers with this --curve, "
                         "--study, --command and --note (nothing retrained or re-scored; CHECKPOINT is only named)")
    ap.add_argument("--note", default="", help="provenance the run did not record, shown in the card as written")
    a = ap.parse_args(argv)
    if a.card_only:
        gen = load_pretrained(a.name)
        curve = json.loads(Path(a.curve).read_text()) if a.curve else []
        study = json.loads(Path(a.study).read_text()) if a.study else {}
        card = {**gen.card, "command": a.command, "note": a.note}
        write_card(WEIGHTS_DIR / f"{a.name}_MODEL_CARD.md", f"Model card: {a.name} (depth map -> face, "
                   f"{gen.cfg.image_size} px)", card_sections(card, gen.path.stat().st_size, gen, curve, study))
        record_checksum(gen.path)
        return
    torch.set_num_threads(1)
    t0 = time.time()
    run = load_run(a.checkpoint)
    model = load_face_model()
    pcfg = PairedConfig(size=run.cfg.image_size)
    train = PairedFaceDataset("train", pcfg, model=model, progress=False)
    test = PairedFaceDataset("test", pcfg, model=model, progress=False)
    render, pose = train.render_config(model), train.pose_jitter(model)
    path = WEIGHTS_DIR / f"{a.name}.safetensors"
    latent = None
    if "E" in run.nets:
        from .shipped import latent_directions

        mean, dirs, scales = latent_directions(run.nets["E"], train.tensors()[0][:2000], k=4)
        latent = {"mean": mean, "directions": dirs, "scales": scales}
    blob = shipped_blob(run, render, pose, {}, latent)  # scored as shipped (float16), before its card is written
    gen = generator_from_blob(blob, path)
    small = card_numbers(gen, model, train=train)
    ev = evaluate_for_card(lambda d, m, z: gen.generate(d, m, z=z), model, train, test, a.n, z_dim=gen.cfg.z_dim)
    raw = None
    if "G_ema" in run.nets:  # the EMA ablation, free: the same run's raw generator weights
        G = run.nets["G"].eval().requires_grad_(False)
        raw = evaluate_for_card(lambda d, m, z: G(generator_input(d, m, run.cfg.mask_input), z).detach(), model, train,
                                test, a.n, z_dim=gen.cfg.z_dim, references=False)["model"]
    starts = [{k: h[k] for k in ("init_from", "source_step")} | {"source_source": h["source_config"].get(
        "input_convention", {}).get("source", "not recorded")} for h in run.config_history if "init_from" in h]
    card = {"small_set": small, "evaluation": ev, "raw_G": raw, "step": run.step, "wall_s": a.wall_s, "starts": starts,
            "command": a.command, "note": a.note, "config": {k: v for k, v in asdict(run.cfg).items() if k != "data"},
            "data": run.cfg.data, "machine": f"{platform.machine()}, {__import__('os').cpu_count()} CPU cores "
            f"{' (' + a.machine_note + ')' if a.machine_note else ''}, torch {torch.__version__}, 1 thread, no GPU"}
    size = write_shipped(path, {**blob, "card": card})
    curve = json.loads(Path(a.curve).read_text()) if a.curve else []
    study = json.loads(Path(a.study).read_text()) if a.study else {}
    write_card(WEIGHTS_DIR / f"{a.name}_MODEL_CARD.md", f"Model card: {a.name} (depth map -> face, "
               f"{run.cfg.image_size} px)", card_sections(card, size, gen, curve, study))
    record_checksum(path)  # its line in the card just written
    print(json.dumps({k: card[k] for k in ("small_set", "evaluation", "raw_G", "step")}, indent=1, default=float))
    print(f"exported {path} ({size / 2 ** 20:.2f} MiB) in {time.time() - t0:.0f} s")

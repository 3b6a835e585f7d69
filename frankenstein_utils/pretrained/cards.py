"""Model cards: their sections, the study's index, and rewriting one section or line of a shipped card."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ..io.files import atomic_write_bytes
from ..objectives.registry import PEER_OBJECTIVES
from .shipped import WEIGHTS_DIR

pass
from .shipped import CHECKSUMS, read_shipped_card, update_card


def write_card(path, title: str, sections: dict) -> None:
    """MODEL_CARD.md from ``sections`` = {heading: markdown text}."""
    text = f"# {title}\n\n" + "\n\n".join(f"## {h}\n\n{body.strip()}" for h, body in sections.items()) + "\n"
    atomic_write_bytes(path, text.encode())


EVALUATION_SECTION = "Evaluation at one N (every shipped model and every control, one context)"
SUPERSEDED = ("Superseded measure, kept as this run's history: face-FD at {n} samples of 128-D descriptors is "
              "mostly small-sample bias (two samples of the same photos score about 0.08 at 128), and the "
              "same-pose identity AUC punishes a generator for turning the head with its input. The section "
              f"\"{EVALUATION_SECTION}\" replaces these numbers.")


def replace_card_section(md, heading: str, section: str) -> None:
    """Put ``section`` (markdown starting with ``## heading``) in place of that section of the card ``md``, or at
    its end where it has none; the rest of the card is kept as it is."""
    md = Path(md)
    body = md.read_text()
    head = f"## {heading}\n"
    if head in body:
        start = body.index(head)
        nxt = body.find("\n## ", start + len(head))
        body = body[:start] + section.rstrip("\n") + "\n" + (body[nxt:] if nxt >= 0 else "")
    else:
        body = body.rstrip("\n") + "\n\n" + section
    atomic_write_bytes(md, body.encode())


ABLATION_SECTION = "Ablations and peers at one N (short equal budget)"


def ablation_section(results: dict, command: str) -> str:
    """The flagship card's section for ``study.ablation.run_study`` results scored at one N (KID on descriptors), every
    number from ``results``; rows in order of KID; runs that did not finish are named below the table."""
    failed = {k: r for k, r in results.items() if r.get("status", "ok") != "ok"}
    results = {k: r for k, r in results.items() if k not in failed}
    if not results:
        raise ValueError(f"no run of the ablation finished: {sorted(failed)}")
    first = next(iter(results.values()))
    n, n_ref, steps = first["n"], first["n_reference"], first["steps"]
    if any((r["n"], r["n_reference"], r["steps"]) != (n, n_ref, steps) for r in results.values()):
        raise ValueError("the ablation's runs were scored at different N or trained for different steps")
    rows = "\n".join(
        f"| {k} | {r['kid']:.1f} ± {r['kid_se']:.1f} | {r['nme']:.3f} | {r['detection']:.3f} | "
        f"{r['diversity_share']:.3f} | {r['checkerboard']:.1e} | {r.get('train_s') or r['wall_s']:.0f} |"
        for k, r in sorted(results.items(), key=lambda kv: kv[1]["kid"]))
    return (f"## {ABLATION_SECTION}\n\nEach run: {steps} steps, batch 8, width 8 (a budget far below this model's), "
            f"one seed, retrained and scored by `study.ablation.run_study` (`{command}`): N = {n} generated faces "
            f"({first['inputs']}) against all {n_ref} test photos. KID x 10^3 on dlib descriptors (± its standard "
            f"error over subsets), NME against the face model's landmarks, detection, diversity share (of the test "
            f"photos'), checkerboard (test photos: {first['reference_checkerboard']:.1e}). It replaces the section "
            f"headed \"Ablations and peers (short equal budget; superseded measure)\".\n\n"
            f"| run | KID x 10^3 | NME | detection | diversity share | checkerboard | training s |\n"
            f"|---|---|---|---|---|---|---|\n{rows}\n"
            + "".join(f"\nNot finished: {k} ({r['status']}: {(r.get('message') or '').split(chr(10))[0]})"
                      for k, r in failed.items()) + ("\n" if failed else ""))


def ship_ablation(results_path, command: str, name: str = "flagship", weights_dir=None) -> dict:
    """Store ``study.ablation.run_study``'s one-N results (``results_path``) in the shipped ``name``'s card
    (``ablation_n``) and write them as its MODEL_CARD.md's section ``ABLATION_SECTION``. Returns the results."""
    results = json.loads(Path(results_path).read_text())
    section = ablation_section(results, command)
    folder = Path(weights_dir) if weights_dir else WEIGHTS_DIR
    kept = {k: {f: v for f, v in r.items() if f not in ("history", "config", "message")} for k, r in results.items()}
    update_card(folder / f"{name}.safetensors", ablation_n={"command": command, "results": kept})
    replace_card_section(folder / f"{name}_MODEL_CARD.md", ABLATION_SECTION, section)
    return results


SWEEP_SECTION = "Sweeps over the explorer's range"


def _replace_line(text: str, lead: str, new: str):
    lines = text.split("\n")
    hits = [i for i, line in enumerate(lines) if line.startswith(lead)]
    for i in hits:
        lines[i] = new
    return "\n".join(lines), len(hits)


def _row(name, r, keys):
    fmt = lambda k: "–" if r.get(k) is None else (f"{r[k]:.1e}" if k == "checkerboard" else f"{r[k]:.3f}")
    return f"| {name} | " + " | ".join(fmt(k) for k in keys) + " |"


def card_sections(card: dict, size: int, gen, curve: list, study: dict) -> dict:
    """The model card's text, every number from ``card`` (nothing typed in)."""
    ev, m, cfg = card["evaluation"], card["evaluation"]["model"], card["config"]
    from ..train.config import TrainConfig

    base = asdict(TrainConfig())
    changed = {k: v for k, v in cfg.items() if k in base and base[k] != v and k not in ("out_dir", "steps")}
    n_g = sum(p.numel() for p in gen.nets["G"].parameters())
    n_e = sum(p.numel() for p in gen.nets["E"].parameters()) if "E" in gen.nets else 0
    keys = ("face_fd", "nme", "detection", "diversity", "identity_auc", "checkerboard")
    rows = [_row("this model (G's EMA), z ~ N(0, I)", m, keys)]
    if card.get("raw_G"):
        rows.append(_row("same run, raw G weights (no EMA)", card["raw_G"], keys))
    for k in ("train photos", "train photos blurred sigma 2", "real-photo oracle", "shuffled",
              "synthetic targets shuffled"):
        rows.append(_row(k, ev[k], keys))
    blur_fd, oracle = ev["train photos blurred sigma 2"]["face_fd"], ev["real-photo oracle"]["nme"]
    div_ref = m["reference_diversity"]
    targets = [("face-FD <= blurred (sigma 2) photos'", m["face_fd"], blur_fd, m["face_fd"] <= blur_fd),
               ("NME <= 1.5 x real-photo oracle", m["nme"], 1.5 * oracle, m["nme"] <= 1.5 * oracle),
               ("identity AUC >= 0.8 (depth-blind-proof design)", m["identity_auc"], 0.8, m["identity_auc"] >= 0.8),
               ("diversity >= 80 % of test photos'", m["diversity"], 0.8 * div_ref, m["diversity"] >= 0.8 * div_ref),
               ("checkerboard score <= 2 x real photos'", m["checkerboard"], 2 * ev["train photos"]["checkerboard"],
                m["checkerboard"] <= 2 * ev["train photos"]["checkerboard"])]
    source = card["data"].get("paired", {}).get("depth_source", "landmarks")
    pairs_text = ("depth of the face model fitted to each photo's landmarks, rendered by the synthetic inputs' own "
                  "path (`PairedConfig(depth_source='fitted')`, model-domain pairs)" if source == "fitted" else
                  "depth rasterized from each photo's MediaPipe FaceMesh landmark mesh (`PairedConfig(depth_source="
                  "'landmarks')`)")
    sec = {}
    sec["What it is"] = (
        f"A generator from a face-model depth map (1 x {cfg['image_size']} x {cfg['image_size']}, the package's depth "
        f"convention, rendered with the stored `render`/`pose` settings) and an appearance code z ({cfg['z_dim']}-D, "
        f"N(0, I) prior) to an RGB face in [-1, 1]: `frankenstein_utils.nets.flagship.FlagshipGenerator` "
        f"({n_g:,} parameters; bottleneck {cfg['fs_bottleneck']} px, upsampling `{cfg['fs_upsample']}`, modulation "
        f"`{cfg['fs_modulation']}`), the exponential moving average (decay {cfg['fs_ema']}) of its weights, plus the "
        f"appearance encoder ({n_e:,} parameters) that maps a photo to z. Stored in float16: {size / 2 ** 20:.2f} MiB. "
        f"Load with `frankenstein_utils.pretrained.shipped.load_pretrained('flagship')` (float32, CPU, eval mode).")
    sec["Data and terms"] = (
        "- Photos: the 10,000-image CelebA subset in `../shared/data/celeba_10k` (img_align_celeba 000001-010000, "
        "downscaled 2x), cropped and resized as `data.pairs.PairedConfig`; per-image split train/val/test 90/5/5 % "
        "(seed 0; no identity labels, so one celebrity can be in train and test). **CelebA may be used only for "
        "non-commercial research and educational purposes**; these weights are derived from it and carry the same "
        "restriction.\n"
        f"- Training pairs: {pairs_text}; "
        f"unpaired reals: the same training photos; synthetic inputs: ICT-FaceKit face-model renders (MIT licence) "
        f"with the paired set's framing ({card['data'].get('n_synthetic', '?')} faces; recorded convention: "
        f"{cfg['input_convention'].get('source', 'not recorded')}).")
    starts = card.get("starts", [])
    total = card["step"] + sum(st["source_step"] for st in starts)
    chain = "".join(f"- Started from `{st['init_from']}` at its step {st['source_step']:,} (`--init-from`: its "
                    f"networks and optimizer moments; that run's inputs: {st['source_source']}), then "
                    f"{card['step']:,} steps on this run's inputs ({cfg['input_convention'].get('source', '?')}).\n"
                    for st in starts)
    sec["Training"] = (
        chain +
        f"- Steps: {total:,} in all (batch {cfg['batch_size']} paired + {cfg['batch_size']} synthetic + "
        f"{cfg['batch_size']} real photos per step); wall time {card['wall_s'] / 3600:.2f} h on {card['machine']}.\n"
        f"- Objective: hinge/NS loss `{cfg['gan_loss']}` on a {cfg['fs_scales']}-scale spectral-norm PatchGAN, lazy R1 "
        f"(gamma {cfg['fs_r1']}, every {cfg['fs_r1_every']} steps), DiffAugment `{cfg['fs_diffaug']}`, L1 x "
        f"{cfg['l1_weight']} and KL x {cfg['kl_weight']} (cVAE branch on pairs), pix2pixHD feature matching x "
        f"{cfg['feature_matching']}, latent regression x {cfg['latent_weight']} (cLR branch on synthetic depth).\n"
        f"- Settings that differ from `TrainConfig`'s defaults: `{json.dumps(changed)}`\n"
        + (f"- Reproduce, one command after the other (each resumes if interrupted; stop the first at step "
           f"{starts[0]['source_step']} and the last at step {card['step']}, or pass `--steps`):\n\n" if starts else
           f"- Reproduce (resumes if interrupted; stop it at step {card['step']}, or pass `--steps {card['step']}`):"
           f"\n\n") +
        f"```bash\n{card['command'].strip()}\n```\n\nthen export: `python -m frankenstein_utils.pretrained "
        f"{card['config']['out_dir']}/checkpoint.pt --wall-s {card['wall_s']:.0f} --command \"...\"`.")
    sec["Evaluation at export (superseded)"] = (
        SUPERSEDED.format(n=ev['n']) + "\n\n" +
        f"{ev['n']} fixed synthetic inputs (`pretrained.scoring.fixed_inputs`, seed 2024: identity ~ N(0, I), pose and "
        f"expression drawn from the training photos' fits) with z ~ N(0, I), judged by dlib "
        f"(`judges`: HOG detector, 68-point shape predictor, ResNet descriptor; images upsampled bicubic to 256 px); "
        f"reference = the first {ev['n']} test photos (never trained on). face-FD: Fréchet distance of dlib "
        f"descriptors vs the test photos; NME: inner 51 points vs the face model's own landmarks (photos: vs their "
        f"MediaPipe landmarks mapped to iBUG), divided by the outer-eye-corner distance; identity AUC: same identity "
        f"in other poses closer than other identities with the same code and pose; checkerboard: share of spectral "
        f"power on the Nyquist lines.\n\n| row | face-FD | NME | detection | diversity | identity AUC | checkerboard |\n"
        f"|---|---|---|---|---|---|---|\n" + "\n".join(rows) +
        f"\n\nTest photos' own descriptor diversity: {div_ref:.3f}.\n\n**Targets** (issue 12), computed:\n\n"
        "| target | measured | bound | met |\n|---|---|---|---|\n" +
        "\n".join(f"| {t} | {v:.4g} | {b:.4g} | {'yes' if ok else '**no**'} |" for t, v, b, ok in targets) +
        "\n\n" + small_set_line("flagship", card["small_set"]))
    if curve:
        sec["Training curve (superseded measure)"] = (
            SUPERSEDED.format(n=64) + "\n\nSnapshots of the run, each scored with `card_numbers` (64 inputs):\n\n"
                                 "| step | wall h | face-FD | NME | detection |\n|---|---|---|---|---|\n" +
                                 "\n".join(f"| {c['step']} | {c['wall_s'] / 3600:.2f} | {c['face_fd']:.3f} | "
                                           f"{c['nme']:.3f} | {c['detection']:.3f} |" for c in curve))
    if study:
        keys = ("face_fd", "nme", "detection", "diversity", "checkerboard", "wall_s")
        sec["Ablations and peers (short equal budget; superseded measure)"] = (
            SUPERSEDED.format(n=128) + "\n\n" +
            f"Each run: {next(iter(study.values()))['steps']} steps, batch 8, width 8 (a budget far below this "
            f"model's), scored by `study.ablation.run_study` on 128 fixed synthetic inputs vs 128 test photos; inputs: "
            f"{'; '.join(sorted({v.get('inputs', 'not recorded') for v in study.values()}))}.\n\n"
            "| run | face-FD | NME | detection | diversity | checkerboard | wall s |\n|---|---|---|---|---|---|---|\n" +
            "\n".join(_row(k, v, keys) for k, v in study.items()))
    if card.get("note"):
        sec["Note"] = card["note"]
    sec["Limitations"] = (
        "64 px; CPU budget of about an hour on a shared 2-core machine, far below what GAN faces need; the test "
        "photos come from the same CelebA subset (per-image split); the identity rows use jitter poses and neutral "
        "expressions.")
    return sec


def study_card_sections(name: str, card: dict, size: int, run) -> dict:
    """A study model's card, every number from ``card``."""
    from ..nets.layers import count_parameters

    c = run.cfg
    n = {k: count_parameters(v) for k, v in run.nets.items() if k in ("G", "E")}
    pts = card["curve"]
    sec = {"What it is": (
        f"Model `{name}` of the study (mode `{c.mode}`, generator `{c.generator if c.mode not in PEER_OBJECTIVES else c.mode}`, "
        f"{n['G']:,} generator parameters" + (f", appearance encoder {n['E']:,}" if "E" in n else "") +
        f"), trained at the study's one equal budget so that every model of the comparison had the same steps, "
        f"batch and width. Stored in float16: {size / 2 ** 10:.0f} KiB. Load with "
        f"`frankenstein_utils.pretrained.shipped.load_pretrained('study/{name}')`; notebook 04 evaluates it beside its own "
        f"runs.")}
    sec["Data and terms"] = (
        "CelebA photos (`../shared/data/celeba_10k`; **non-commercial research and educational use only**; these "
        "weights are derived from them and carry the same restriction), per-image split 90/5/5 %. Streams this "
        f"model read (observed): {', '.join(card['streams'])}; paired depth: the face model fitted to each photo; "
        f"recorded input convention: {c.input_convention.get('source', 'not recorded')}.")
    sec["Training"] = (
        f"- {card['step']:,} steps, batch {c.batch_size}, width {c.width}, {c.image_size} px, seed {c.seed}; "
        f"{card['train_s'] / 60:.1f} min of training (scoring excluded) on {card['machine']}.\n"
        f"- Settings that differ from `TrainConfig`'s defaults: `{json.dumps(card['changed'])}`\n"
        f"- Retrain (resumes if interrupted): `{card['command']}`")
    kid = all("kid" in p for p in pts)  # curves scored before KID have face-FD alone
    sec["Curve"] = (
        f"Scored after every segment on {card['n_eval']} fixed synthetic inputs (`pretrained.scoring.fixed_inputs`, seed "
        f"2024), dlib judges (`pretrained.scoring.face_scores`)"
        + (f": KID x 10^3 of the descriptors (± its standard error) against all {pts[-1]['kid_n_reference']} test "
           f"photos, the evaluation's realism measure (unbiased at N = {pts[-1]['kid_n']}, but noisier than at "
           f"N = 500); face-FD against {card['n_eval']} test photos (biased at this N: kept to compare with older "
           "curves)" if kid else " against as many test photos") +
        ":\n\n| step | train min | " + ("KID x 10^3 | " if kid else "") + "face-FD | NME | detection | diversity |\n|"
        + "---|" * (7 if kid else 6) + "\n" +
        "\n".join(f"| {p['step']} | {p['train_s'] / 60:.1f} | "
                  + (f"{1e3 * p['kid']:.0f} ± {1e3 * p['kid_se']:.0f} | " if kid else "")
                  + f"{p['face_fd']:.3f} | {p['nme']:.3f} | {p['detection']:.3f} | {p['diversity']:.3f} |"
                  for p in pts))
    sec["Evaluation of the shipped weights"] = (
        small_set_line("study", card["small_set"]))
    return sec



# the card line that states the small-set numbers (written by the card sections and by ``rescore_shipped``)
SMALL_SET_LINE = {"flagship": "Small fixed set recomputed by `tests/test_pretrained.py` (`pretrained.scoring.card_numbers`, "
                              "64 inputs, generated in float64 so that every CPU judges the same 8-bit images): ",
                  "study": "`card_numbers` of the float16 weights (recomputed by `tests/test_pretrained.py`), "
                           "generated in float64 so that every CPU judges the same 8-bit images: "}


def small_set_line(kind: str, small: dict) -> str:
    nums = json.dumps({k: round(v, 4) for k, v in small.items() if isinstance(v, float)})
    return f"{SMALL_SET_LINE[kind]}`{nums}`."



def write_study_index(folder, params_path) -> None:
    """``study/README.md``: every shipped study model with its size, budget and card numbers (read from the files)."""
    rows = []
    for f in sorted(Path(folder).glob("*.safetensors")):
        card = read_shipped_card(f)
        sm = card["small_set"]
        rows.append(f"| [`{f.stem}`]({f.stem}_MODEL_CARD.md) | {f.stat().st_size / 2 ** 10:.0f} KiB | {card['step']:,} | "
                    f"{card['train_s'] / 60:.1f} | {sm['face_fd']:.3f} | {sm['nme']:.3f} | {sm['detection']:.2f} |")
    text = ("# The study at one equal budget (shipped)\n\nEvery model of the study trained with the same steps, batch, "
            f"width and data by `python -m frankenstein_utils.study.variants {params_path} --export` (the parameter "
            "file states the budget); each card has the model's curve and the command that retrains it alone. "
            "Numbers: `pretrained.scoring.card_numbers` of the shipped float16 weights (64 fixed synthetic inputs vs 64 test "
            f"photos). Files: `<model>.safetensors` (reading one runs no code), SHA-256 in [`{CHECKSUMS}`](../"
            f"{CHECKSUMS}) and in each card, checked by `load_pretrained`.\n\n"
            "| model | size | steps | train min | face-FD | NME | detection |\n|---|---|---|---|---|---|---|\n"
            + "\n".join(rows) + "\n")
    atomic_write_bytes(Path(folder) / "README.md", text.encode())

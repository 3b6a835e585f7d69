"""Scoring shipped models: fixed inputs, the card's numbers and images, every shipped model at one N, sweeps."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

from ..io.draws import normal
from ..io.files import atomic_write_bytes
from ..render.rasterize import PoseJitter, RenderConfig
from .cards import (EVALUATION_SECTION, SWEEP_SECTION, _replace_line, replace_card_section, small_set_line,
                    write_study_index)
from .shipped import WEIGHTS_DIR, available, load_pretrained, update_card


# ---- the card's numbers: a small fixed set of synthetic inputs, judged by dlib ---------------------------------------
def fixed_inputs(model, render: RenderConfig, pose: PoseJitter, n: int = 64, seed: int = 2024, train=None):
    """``n`` face-model depth maps, their masks, the face model's own 68 landmarks in their pixel frame and
    appearance codes z ~ N(0, I) (8-D): a fixed function of ``seed``. With ``train`` (a ``PairedFaceDataset``) the
    faces are ``train.synthetic``'s: identity ~ N(0, I) over 15 components, pose and expression drawn from the
    photos' fits, the distribution the generator is trained and evaluated on (notebook 04); without it, identity
    with ``pose`` jitter and a neutral expression."""
    from ..evaluation.context import model_landmarks
    from ..render.rasterize import render_depth

    g = torch.Generator().manual_seed(seed)
    if train is not None:
        s = train.synthetic(n, seed=seed, model=model)
        d, m = s.render_batch(list(range(n)))
        z = normal(n, 8, generator=g)
        return d, m, model_landmarks(model, s.coeffs, s.config.render, s.poses, s.expressions), z
    coeffs = model.sample_coefficients(n, 15, generator=g)
    poses = pose.sample(n, generator=g)
    z = normal(n, 8, generator=g)
    d, m = render_depth(model, coeffs, render, poses)
    return d[:, None], m[:, None].float(), model_landmarks(model, coeffs, render, poses), z


def face_scores(images: torch.Tensor, target_landmarks: np.ndarray, reference: torch.Tensor, ref=None,
                kid=None) -> dict:
    """dlib judges (``judges``; measures of ``metrics``) on generated faces: detection rate, landmark NME against
    the face model's own landmarks (inner points 17-67, fallback box = the reference photos' median detection box),
    face-FD of descriptors against ``reference`` photos, diversity of descriptors (beside the reference's own).
    ``ref``: the reference photos already analysed (``judges().analyse(reference)``), to score many generators.
    ``kid`` = (reference descriptors, standardisation): adds KID of the faces' descriptors against them
    (``measures.kernel_distance_features``, unbiased at this N: "kid", "kid_se", "kid_n", "kid_n_reference")."""
    from ..evaluation import judges as J
    from ..evaluation import measures as M

    jd = J.judges()
    ref = jd.analyse(reference) if ref is None else ref
    box = tuple(float(v) for v in np.median(ref.boxes[ref.found], 0) / reference.shape[-1])
    faces = jd.analyse(images, fallback_box=box)
    det, e = M.detection_rate(faces.found), M.nme(faces.landmarks, target_landmarks, J.INNER_POINTS)
    out = {}
    if kid is not None:
        k = M.kernel_distance_features(faces.embeddings, kid[0], kid[1])
        out = {"kid": k["kid"], "kid_se": k["kid_se"], "kid_n": k["n_a"], "kid_n_reference": k["n_b"]}
    return out | {"detection": float(det["rate"]), "detection_ci": [float(v) for v in det["ci"]],
            "nme": float(e["nme"]), "nme_ci": [float(v) for v in e["ci"]],
            "face_fd": float(M.frechet_distance_features(faces.embeddings, ref.embeddings)),
            "diversity": float(M.mean_pairwise_distance(faces.embeddings)),
            "reference_diversity": float(M.mean_pairwise_distance(ref.embeddings)),
            "reference_detection": float(ref.found.mean())}


def reference_photos(n: int = 64, size: int = 64) -> torch.Tensor:
    """The first ``n`` photos of the paired set's test split (never trained on), in [-1, 1]."""
    from ..data.pairs import PairedConfig, PairedFaceDataset

    test = PairedFaceDataset("test", PairedConfig(size=size), progress=False)
    return test.tensors()[0][:n]


def card_numbers(gen, model, n: int = 64, seed: int = 2024, train=None) -> dict:
    """The numbers the card records and ``tests/test_pretrained.py`` recomputes: ``face_scores`` of ``gen`` on
    ``fixed_inputs(n, seed)`` (drawn from the fitted pose and expression distribution of the paired training set,
    ``train``, loaded when not given) against ``reference_photos(n)``."""
    faces, lm = card_images(gen, model, n, seed, train)
    ref, ref_faces = _analysed_reference(n, gen.cfg.image_size)
    return face_scores(faces, lm, ref, ref_faces)


def card_images(gen, model, n: int = 64, seed: int = 2024, train=None):
    """The faces ``card_numbers`` judges: ``gen`` in float64 (``PretrainedGenerator.in_float64``, so the same
    8-bit images on any CPU) on ``fixed_inputs(n, seed)``, as float32 images in [-1, 1], and their target
    landmarks."""
    if train is None:
        from ..data.pairs import PairedConfig, PairedFaceDataset

        train = PairedFaceDataset("train", PairedConfig(size=gen.cfg.image_size), progress=False)
    d, m, lm, z = fixed_inputs(model, gen.render, gen.pose, n, seed, train=train)
    g64 = gen.in_float64()
    z_dim = getattr(gen.nets["G"], "z_dim", 0)
    faces = torch.cat([g64.generate(d[s:s + 32], m[s:s + 32], z=z[s:s + 32, :z_dim]) for s in range(0, n, 32)])
    return faces, lm


@functools.lru_cache(maxsize=4)
def _analysed_reference(n: int, size: int):
    """``reference_photos(n, size)`` and their dlib analysis, once per process (many cards are scored against
    them)."""
    from ..evaluation.judges import judges

    ref = reference_photos(n, size)
    return ref, judges().analyse(ref)


# ---- export with a full evaluation (python -m frankenstein_utils.pretrained CHECKPOINT ...) ------------------------
def evaluate_for_card(generate, model, train, test, n: int = 256, seed: int = 2024, z_dim: int = 8,
                      references: bool = True) -> dict:
    """The card's evaluation on ``n`` fixed synthetic inputs (``fixed_inputs``) against ``n`` test photos, with the
    reference rows the targets are stated against: training photos (real, and blurred with sigma = 2 px) vs the test
    photos (face-FD), the real-photo oracle and shuffled rows for landmark error (test photos' dlib landmarks vs their
    own MediaPipe landmarks mapped to iBUG, ``evaluation.context.mediapipe_ibug_map``), identity AUC under the
    depth-blind-proof design (``evaluation.context.identity_set``), checkerboard score beside real photos'."""
    from ..evaluation import context as EV
    from ..evaluation import judges as J
    from ..evaluation import measures as M

    render, pose = train.render_config(model), train.pose_jitter(model)
    d, m, lm, z = fixed_inputs(model, render, pose, n, seed, train=train)
    ref = test.tensors()[0][:n]
    imgs = torch.cat([generate(d[s:s + 64], m[s:s + 64], z[s:s + 64, :z_dim]) for s in range(0, n, 64)])
    out = {"model": face_scores(imgs, lm, ref), "n": n}
    out["model"]["checkerboard"] = _cb(imgs)
    jd = J.judges()
    ref_faces = jd.analyse(ref)
    box = tuple(float(v) for v in np.median(ref_faces.boxes[ref_faces.found], 0) / ref.shape[-1])
    _identity(out, generate, model, render, pose, seed, z_dim, jd, box)
    if not references:
        return out
    tr = train.tensors()[0]
    real = tr[1000:1000 + n]  # training photos not used to fit the landmark map
    for name, x in (("train photos", real), ("train photos blurred sigma 2", EV.gaussian_blur(real, 2.0))):
        f = jd.analyse(x, fallback_box=box)
        out[name] = {"face_fd": float(M.frechet_distance_features(f.embeddings, ref_faces.embeddings)),
                     "detection": float(f.found.mean()), "diversity": float(M.mean_pairwise_distance(f.embeddings)),
                     "checkerboard": _cb(x)}
    W = EV.mediapipe_ibug_map(train, jd, 1000, cache_dir="outputs/cache")["W"]
    test_lm = J.map_mediapipe(EV.photo_mediapipe(test)[:n], W)
    tf = jd.analyse(ref, embed=False, fallback_box=box)
    out["real-photo oracle"] = {"nme": float(M.nme(tf.landmarks, test_lm, J.INNER_POINTS)["nme"])}
    out["shuffled"] = {"nme": float(M.nme(tf.landmarks, np.roll(test_lm, 1, 0), J.INNER_POINTS)["nme"])}
    # chance for the synthetic inputs: another input's target landmarks put forward as the prediction
    out["synthetic targets shuffled"] = {"nme": float(M.nme(np.roll(lm, 1, 0), lm, J.INNER_POINTS)["nme"])}
    return out


def _identity(out, generate, model, render, pose, seed, z_dim, jd, box):
    """Identity AUC under the matched pair design (``evaluation.measures.identity_pairs``): 2 codes x 50 identities x 5
    poses (``evaluation.context.identity_set``), interval by bootstrap over identities."""
    from ..evaluation import context as EV
    from ..evaluation import measures as M

    idd, idm, ids, codes, pidx = EV.identity_set(model, render, pose, 2, 50, 5, seed)
    zc = normal(2, z_dim, generator=torch.Generator().manual_seed(seed + 4242))[torch.from_numpy(codes)]
    emb = jd.analyse(torch.cat([generate(idd[s:s + 64], idm[s:s + 64], zc[s:s + 64]) for s in range(0, len(idd), 64)]),
                     fallback_box=box).embeddings
    ia = M.identity_auc(emb, ids, codes, pidx, seed=seed)
    out["model"]["identity_auc"], out["model"]["identity_auc_ci"] = ia["auc"], ia["ci"]


def _cb(x):
    from ..evaluation.measures import checkerboard_score

    return checkerboard_score(x)


def evaluate_shipped(names=None, workers: int = 2, out_md=None, **context_kw) -> dict:
    """Every shipped model (or ``names``) scored by ``evaluation`` in one judges-only context at its default sizes
    (N = 500 synthetic faces with descriptors against all test photos; identity on 50 identities x 5 poses x 2
    codes, with its controls), beside the reference and control rows and the ladder checks. Writes
    ``weights/EVALUATION.md`` (the table, the checks, the command), stores each model's row in its file's card
    (``evaluation_n``) and replaces the section ``EVALUATION_SECTION`` of its MODEL_CARD.md. Returns the results."""
    import time

    from ..data.pairs import PairedConfig, PairedFaceDataset
    from ..evaluation import context as EV
    from ..facemodel.model import load_face_model

    t0 = time.time()
    model = load_face_model()
    names = list(names or available())
    size = load_pretrained(names[0]).cfg.image_size
    pcfg = PairedConfig(size=size)
    train = PairedFaceDataset("train", pcfg, model=model, progress=False)
    test = PairedFaceDataset("test", pcfg, model=model, progress=False)
    if "heldout" not in context_kw:  # memorisation against the validation split no generator trained on
        context_kw["heldout"] = PairedFaceDataset("val", pcfg, model=model, progress=False)
    ctx = EV.build_context(model, train, test, judges_only=True, cache_dir="outputs/cache", workers=workers,
                           **context_kw)
    refs = EV.reference_rows(ctx)
    checks = EV.ladder_checks(refs)
    rows = {}
    for name in names:
        gen = load_pretrained(name)
        f = EV.generator_fn(gen)
        rows[name] = EV.evaluate_generator(ctx, f, f.z_dim)
        print(f"{name}: KID x 10^3 {1e3 * rows[name]['kid']:.1f}, NME {rows[name]['nme']:.3f} "
              f"({time.time() - t0:.0f} s)", flush=True)
    n, n_ref = rows[names[0]]["n_judged"], rows[names[0]]["n_reference"]
    command = "python -m frankenstein_utils.pretrained evaluate" + ("" if names == available() else " " + " ".join(names))
    path = Path(out_md) if out_md else WEIGHTS_DIR / "EVALUATION.md"
    old = path.read_text() if path.exists() else ""
    table, kept = table_with_kept_rows(EV.results_table(refs, rows, checks), list(refs), old)
    checks_md = "\n".join(f"- {k}: {'passed' if v['ok'] else '**FAILED**'} ({v['rule']})" for k, v in checks.items())
    text = (f"# {EVALUATION_SECTION}\n\nN = {n} synthetic inputs per model (`evaluation.context.build_context`: identity "
            f"~ N(0, I) over 15 components, pose and expression drawn from the training photos' fits), judged with "
            f"descriptors against all {n_ref} test photos; identity on {ctx.id_ids.max() + 1} identities x "
            f"{ctx.id_poses.max() + 1} poses x {ctx.id_codes.max() + 1} codes. KID x 10^3 on dlib descriptors "
            f"(standardized by training photos') is the realism number; face-FD is shown at this N only. "
            f"Generated in float32 on {__import__('platform').machine()}; {time.time() - t0:.0f} s on "
            f"{__import__('os').cpu_count()} cores for {len(rows)} model(s)"
            + (f"; the rows of {len(kept)} other models are kept from an earlier run of the same evaluation (the same "
               f"context and columns; scoring is seeded: a kept row repeats on the machine that made it, and on another "
               f"CPU may differ in its last digits, as float round-off does)" if kept else "")
            + f". Reproduce: `{command}` (`evaluate NAME ...`: those rows alone are replaced).\n\n"
            f"## Ladders and controls\n\n"
            f"{checks_md}\n\n## Table\n\n{table}\n")
    memo, _ = memorisation_section(refs, rows, old)
    text += ("\n" + memo) if memo else ""
    mark = f"## {SWEEP_SECTION}"  # the sweeps (``sweep_shipped``) are kept
    text += ("\n" + old[old.index(mark):]) if mark in old else ""
    atomic_write_bytes(path, text.encode())
    keep = ("kid", "kid_se", "n_judged", "n_reference", "detection", "detection_ci", "nme", "nme_ci", "face_fd",
            "diversity_share", "code_spread", "identity_spread", "identity_auc", "identity_auc_ci",
            "identity_mean_shape", "identity_mean_shape_ok", "identity_auc_same_pose", "near_copy", "near_copy_ci",
            "train_neighbour", "train_neighbour_ci", "train_neighbour_null", "train_neighbour_se", "train_neighbour_z",
            "train_neighbour_distinct")
    for name in names:
        gen = load_pretrained(name)
        row = {k: rows[name][k] for k in keep if k in rows[name]}
        update_card(gen.path, evaluation_n=EV.to_json(row))
        md = gen.path.with_name(f"{gen.path.stem}_MODEL_CARD.md")
        rel = "../EVALUATION.md" if gen.path.parent.name == "study" else "EVALUATION.md"
        fmt = lambda k: (f"{row[k]:.3f}" if isinstance(row.get(k), (int, float))  # noqa: E731
                         and np.isfinite(row[k]) else "–")
        section = (f"## {EVALUATION_SECTION}\n\nThe measures of the evaluation issue at N = {n} against all "
                   f"{n_ref} test photos, beside every other shipped model and every control in [{rel.split('/')[-1]}]"
                   f"({rel}) (`{command}`); they replace the face-FD (small-N, biased) and the same-pose identity "
                   f"AUC quoted elsewhere in this card.\n\n| KID x 10^3 | NME | detection | diversity share | code "
                   f"spread | identity spread | identity AUC | mean-shape control |\n|---|---|---|---|---|---|---|---|"
                   f"\n| {1e3 * row['kid']:.2f} ± {1e3 * row['kid_se']:.2f} | {fmt('nme')} | {fmt('detection')} | "
                   f"{fmt('diversity_share')} | {fmt('code_spread')} | {fmt('identity_spread')} | "
                   f"{fmt('identity_auc')} [{row['identity_auc_ci'][0]:.3f}, {row['identity_auc_ci'][1]:.3f}] | "
                   f"{fmt('identity_mean_shape')}{'' if row.get('identity_mean_shape_ok') else ' (outside 0.4-0.6)'} |\n"
                   + (f"\nMemorisation against the held-out split: {row['train_neighbour']:.3f} "
                      f"[{row['train_neighbour_ci'][0]:.3f}, {row['train_neighbour_ci'][1]:.3f}] of the faces have a "
                      f"training photo as their nearest photo, chance {row['train_neighbour_null']:.3f}, z "
                      f"{row['train_neighbour_z']:+.1f} (copies score 1; see the Memorisation section of "
                      f"[{rel.split('/')[-1]}]({rel})).\n" if "train_neighbour" in row else ""))
        replace_card_section(md, EVALUATION_SECTION, section)
    return {"references": refs, "checks": checks, "rows": rows}


def table_with_kept_rows(table: str, references: list[str], old_text: str = "") -> tuple[str, list[str]]:
    """The evaluation table ``table`` (``results_table``: the reference rows named in ``references``, then the
    evaluated models) with the rows of the other shipped models kept from the table of an earlier EVALUATION.md
    (``old_text``) where that table has the same header (the same columns), in ``available()``'s order; rows of
    models no longer shipped go. Returns (table, names of the kept rows)."""
    lines = table.splitlines()
    head, rule = lines[:2]
    new = {_row_name(line): line for line in lines[2:]}
    kept = _kept_rows(head, old_text, set(new))
    models = {**kept, **{n: line for n, line in new.items() if n not in references}}
    body = [new[n] for n in references] + [models[n] for n in _shipped_order(models)]
    return "\n".join([head, rule, *body]), sorted(kept)


def memorisation_section(refs: dict, rows: dict, old_text: str = "") -> tuple[str, list[str]]:
    """The section "Memorisation" of EVALUATION.md: ``evaluation.context.memorisation_table`` of the reference rows
    ``refs`` and the evaluated models ``rows``, with the other shipped models' rows kept from the same table of an
    earlier EVALUATION.md (``old_text``; same columns only, as ``table_with_kept_rows``). Returns (section, names of
    the kept rows); ("", []) when no row was measured."""
    from ..evaluation.context import memorisation_parts

    parts = memorisation_parts(refs, rows)
    if parts is None:
        return "", []
    intro, table = parts
    present = {_row_name(line) for line in table.splitlines()[2:]}
    table, kept = table_with_kept_rows(table, [r for r in refs if r in present], old_text)
    note = (f"\n\nThe rows of {len(kept)} other models are kept from an earlier run of the same evaluation."
            if kept else "")
    return intro + note + "\n\n" + table + "\n", kept


def _row_name(line: str) -> str:
    return line[2:].split(" |", 1)[0]


def _kept_rows(head: str, old_text: str, replaced) -> dict:
    """{model: line} of an earlier markdown table in ``old_text`` with the header ``head`` (the same columns, so the
    rows measure the same thing): the rows of models still shipped and not in ``replaced``."""
    old, shipped, kept = old_text.splitlines(), available(), {}
    if head in old:
        for line in old[old.index(head) + 2:]:
            if not line.startswith("| "):
                break
            if _row_name(line) in shipped and _row_name(line) not in replaced:
                kept[_row_name(line)] = line
    return kept


def _shipped_order(names) -> list:
    """``names`` in ``available()``'s order, others after them by name."""
    order = {n: i for i, n in enumerate(available())}
    return sorted(names, key=lambda n: (order.get(n, len(order)), n))


def sweep_shipped(names=None, workers: int = 2, md=None, **sweep_kw) -> dict:
    """Every shipped model (or ``names``) swept over the explorer's range (``evaluation.sweep.slider_sweep``: each of
    the 15 shape components at -3 ... 3 sigma and a head turn of -30 ... 30 degrees, 8 codes) beside the depth-as-image
    reference; writes the section ``SWEEP_SECTION`` of ``weights/EVALUATION.md``: one headline number per sweep (score =
    min(intact share, response), 1 = robust) and the summary, and stores each model's summary in its file's card
    (``sweep``). Returns {name: sweep result}."""
    import time

    from ..evaluation import context as EV
    from ..evaluation import sweep as SW
    from ..evaluation.judges import judges
    from ..facemodel.model import load_face_model

    t0 = time.time()
    model = load_face_model()
    names = list(names or available())
    first = load_pretrained(names[0])
    ref_photos = reference_photos(100, first.cfg.image_size)
    found = judges().analyse(ref_photos, embed=False)
    box = tuple(float(v) for v in np.median(found.boxes[found.found], 0) / ref_photos.shape[-1])
    reference = SW.reference_sweep(model, first.render, fallback_box=box, workers=workers, **sweep_kw)
    out = {}
    for name in names:
        gen = load_pretrained(name)
        f = EV.generator_fn(gen)
        out[name] = SW.slider_sweep(f, model, gen.render, f.z_dim, fallback_box=box, workers=workers, **sweep_kw)
        sm = out[name]["summary"]
        print(f"{name}: sweep score {sm['score']:.3f} (worst {sm['worst_sweep']}), broken {sm['broken']}, "
              f"ignored {sm['ignored']} ({time.time() - t0:.0f} s)", flush=True)
        update_card(gen.path, sweep=dict(sm))
    path = Path(md) if md else WEIGHTS_DIR / "EVALUATION.md"
    body = path.read_text() if path.exists() else ""
    mark = f"## {SWEEP_SECTION}"
    lines, kept = sweep_table(reference, out, body[body.index(mark):] if mark in body else "")
    section = (f"## {SWEEP_SECTION}\n\nEach of the 15 shape components at -3, -1.5, 0, 1.5, 3 sigma (others 0, "
               f"neutral pose) and the mean face turned -30 ... 30 degrees about the eyes, each position with the "
               f"same 8 codes (`evaluation.sweep.slider_sweep`); per sweep one number, score = min(intact, response): intact = "
               f"the worst share over positions of codes whose face dlib detects and whose high-frequency energy "
               f"is at most 1.25x the same code's centre face (breaks show), response = Spearman's correlation of "
               f"slider distance and descriptor distance, yaw: landmark follow (ignores show). 1 = robust. Broken: "
               f"intact < 0.5; ignored: response < 0.5. {time.time() - t0:.0f} s on "
               f"{__import__('os').cpu_count()} cores for {len(out)} model(s)"
               + (f"; the rows of {len(kept)} other models are kept from an earlier run of the same sweep" if kept
                  else "") + ". Reproduce: `python -m frankenstein_utils.pretrained sweep` (all; or `sweep NAME ...`: "
               f"those rows alone are replaced).\n\n" + "\n".join(lines) + "\n")
    body = (body[:body.index(mark)] if mark in body else body.rstrip("\n") + "\n\n") + section
    atomic_write_bytes(path, body.encode())
    return out


def sweep_table(reference: dict, swept: dict, old_section: str = "") -> tuple[list[str], list[str]]:
    """The sweep section's table: the reference row, then one row per model, in ``available()``'s order: the models of
    ``swept`` ({name: ``slider_sweep`` result}) and the rows of ``old_section`` (an earlier section) for models still
    shipped and not swept now, where its table has the same columns. Returns (lines, names of the kept rows)."""
    sweeps = list(reference["sweeps"])
    head = "| model | " + " | ".join(sweeps) + " | score (worst sweep) | broken | ignored |"
    lines = [head, "|---|" + "---|" * (len(sweeps) + 3),
             "| reference: depth maps as images (descriptor response only) | " + " | ".join(
                 f"{reference['sweeps'][k]['descriptor_response']:.2f}" for k in sweeps) + " | – | – | – |"]
    rows = _kept_rows(head, old_section, set(swept))  # the reference row is no shipped model: never kept
    kept = sorted(rows)
    for name, r in swept.items():
        sm = r["summary"]
        rows[name] = (f"| {name} | " + " | ".join(f"{r['sweeps'][k]['score']:.2f}" for k in sweeps) +
                      f" | {sm['score']:.2f} ({sm['worst_sweep']}) | {', '.join(sm['broken']) or '–'} | "
                      f"{', '.join(sm['ignored']) or '–'} |")
    return lines + [rows[n] for n in _shipped_order(rows)], kept


def rescore_shipped(names=None) -> dict:
    """Recompute the small-set numbers (``card_numbers``) of shipped models in place: the file's card and the
    matching line of its MODEL_CARD.md (and the study index). For a change of the scoring itself, not of the
    weights; the rest of each card is left as it was written. Returns {name: new small set}."""
    from ..data.pairs import PairedConfig, PairedFaceDataset
    from ..facemodel.model import load_face_model

    model = load_face_model()
    out, train = {}, None
    for name in names or available():
        gen = load_pretrained(name)
        if gen.cfg.buffers:  # its card is the comparison's (buffers_report), with no small fixed set
            print(f"{name}: a buffers generator, scored by python -m frankenstein_utils.study.buffers_report compare")
            continue
        if train is None or train.config.size != gen.cfg.image_size:
            train = PairedFaceDataset("train", PairedConfig(size=gen.cfg.image_size), model=model, progress=False)
        small = card_numbers(gen, model, train=train)
        update_card(gen.path, small_set=small,
                    small_set_scoring="card_numbers: float64 generation, CPU-independent draws")
        md = gen.path.with_name(f"{gen.path.stem}_MODEL_CARD.md")
        kind = "study" if gen.path.parent.name == "study" else "flagship"
        old_lead = {"flagship": "Small fixed set recomputed by", "study": "`card_numbers` of the float16 weights"}[kind]
        text, n_sub = _replace_line(md.read_text(), old_lead, small_set_line(kind, small))
        if n_sub != 1:
            raise ValueError(f"{md}: no line starting {old_lead!r} to update")
        atomic_write_bytes(md, text.encode())
        out[name] = small
        print(f"{name}: {small_set_line(kind, small)}", flush=True)
    if any(n.startswith("study/") for n in out):
        write_study_index(WEIGHTS_DIR / "study", "notebooks/params/study_budget.yaml")
    return out

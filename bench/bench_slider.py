"""Slider latency: the time of one ``FaceExplorer`` update (render + generator + PNG encoding), and where it goes.

For each image size (64 and 128 px) and thread count (1, 2) it moves a different shape slider per update, as a user
does, and prints the median and the max of the whole update (``FaceExplorer.last_update_ms``, widgets built, so the
PNGs are encoded and pushed into the image widgets) in wall time, the median process CPU time of an update (all
threads; with 1 thread it is the wall time the update takes when it has a core to itself, the steadier figure on a
shared machine), then the median of each stage timed on its own: face-model
vertices, projection, z-buffer, depth normalisation, generator, PNG encoding of both images. The target is < 100 ms
at 128 px. The generator is the shipped one (``frankenstein_utils.pretrained.shipped.load_pretrained``) at its own size when
there is one; otherwise, and for the other size, a cVAE run of the study's default width trained here for a few steps
(latency depends on the architecture, not on how long it trained; the run is kept in outputs/bench_slider/).

Appearance (``--part appearance``): explorers in the appearance model's render configuration (64 px, chin region;
the shipped float16 model): depth only (the reference), depth + appearance render with the switch off (free) and on
(from shape), and depth + appearance + the shipped generator's face (``FaceExplorer.with_pretrained(...,
n_appearance=8)``). Each update is a slider moved through its widget, as a drag does (a shape slider and an
appearance slider in turn), timed by ``FaceExplorer.last_update_ms`` (render, PNG encoding, pushing into the image
widgets); it prints median and max wall time, median process CPU time, and each explorer's median over the depth-only
reference's median in the same run.
Usage: python bench/bench_slider.py [--updates 40] [--sizes 64 128] [--threads 1 2] [--part all|generator|appearance]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from frankenstein_utils.apps.widgets import FaceExplorer, GeneratorPanel
from frankenstein_utils.facemodel.appearance import load_appearance  # noqa: E402
from frankenstein_utils.facemodel.model import load_face_model  # noqa: E402
from frankenstein_utils.io.files import png_bytes  # noqa: E402
from frankenstein_utils.io.images import to_uint8  # noqa: E402
from frankenstein_utils.render.rasterize import RenderConfig, normalize_depth, rasterize_depth, to_pixels  # noqa: E402
from frankenstein_utils.train.trainer import load_run  # noqa: E402

OUT = ROOT / "outputs" / "bench_slider"


def shipped_generator():
    try:
        from frankenstein_utils.pretrained.shipped import load_pretrained

        return load_pretrained()
    except (ImportError, FileNotFoundError, ValueError) as e:
        print(f"no shipped generator ({type(e).__name__}: {str(e)[:120]})")
        return None


def trained_run(size: int, steps: int):
    """A cVAE run (default width) at ``size`` px, trained once here and reused."""
    ck = OUT / f"cvae_{size}" / "checkpoint.pt"
    if not ck.exists():
        cmd = [sys.executable, "-m", "frankenstein_utils.train", "--mode", "cvae", "--size", str(size),
               "--limit", "200", "--steps", str(steps), "--sample-every", "0", "--seed", "0",
               "--out-dir", str(ck.parent), "--cache-dir", str(OUT / "cache")]
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    return load_run(ck)


def ms(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) * 1000


def slider_updates(ex, sliders, updates: int):
    """Median and max wall ms (``last_update_ms``) and median CPU ms of ``updates`` slider moves, cycling through
    ``sliders`` (widgets) with alternating +-2, after 3 warm-up moves."""
    wall, cpu = [], []
    for i in range(updates + 3):
        c0 = time.process_time()
        sliders[i % len(sliders)].value = 2.0 if (i // len(sliders)) % 2 == 0 else -2.0
        if i >= 3:
            cpu.append((time.process_time() - c0) * 1000)
            wall.append(ex.last_update_ms)
    return statistics.median(wall), max(wall), statistics.median(cpu)


def appearance_part(model, threads: list[int], updates: int, shipped) -> None:
    app = load_appearance()
    cfg = app.render_config()
    explorers = {"depth only (reference)": FaceExplorer(model, 15, cfg),
                 "depth + appearance, free": FaceExplorer.with_appearance(model, 8, app),
                 "depth + appearance, from shape": FaceExplorer.with_appearance(model, 8, app)}
    explorers["depth + appearance, from shape"].widget
    explorers["depth + appearance, from shape"].appearance.switch.value = True
    if shipped is not None and shipped.render.to_dict() == cfg.to_dict():
        explorers[f"depth + appearance + {shipped.path.name}"] = FaceExplorer.with_pretrained(model, n_appearance=8,
                                                                                             app=app)
    panel = explorers["depth + appearance, free"].appearance
    print(f"\nappearance explorers: {cfg.resolution} px, region {cfg.region!r}, shipped appearance model "
          f"({app.n_components} components); slider names: {', '.join(panel.names)}")
    print("measured shares of each component's colour change (lightness / colour / left-right) and skin ITA change "
          "(deg, +-2 sd): " + "; ".join(f"a{k} {m['lightness']:.2f}/{m['colour']:.2f}/{m['left_right']:.2f} "
                                         f"{m['ita']:+.0f}" for k, m in enumerate(panel.measures)))
    print(f"{updates} updates per row, a shape slider and an appearance slider in turn (shape only for the reference)")
    print(f"{'explorer':44} {'thr':>3} {'median ms':>9} {'max ms':>7} {'CPU ms':>6} {'x reference':>11} "
          f"{'x 100 ms target':>15}")
    for threads in threads:
        torch.set_num_threads(threads)
        ref = None
        for name, ex in explorers.items():
            ex.widget
            sliders = ex.shape_sliders[:4]
            if ex.appearance:  # a shape slider and an appearance slider in turn
                sliders = [s for pair in zip(sliders, ex.appearance.sliders[:4]) for s in pair]
            med, worst, cpu = slider_updates(ex, sliders, updates)
            ref = ref or med
            print(f"{name:44} {threads:3d} {med:9.1f} {worst:7.1f} {cpu:6.1f} {med / ref:10.2f}x {med / 100:14.2f}x")
            ex.reset()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--updates", type=int, default=40)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--part", choices=("all", "generator", "appearance"), default="all")
    a = ap.parse_args(argv)
    model = load_face_model()
    shipped = shipped_generator()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.2f}")
    if a.part != "appearance":
        generator_part(model, a, shipped)
    if a.part != "generator":
        appearance_part(model, a.threads, a.updates, shipped)


def generator_part(model, a, shipped) -> None:
    header = (f"{'size':>4} {'thr':>3} {'median ms':>9} {'max ms':>7} {'CPU ms':>6}  stage medians (ms): vertices  "
              f"project  z-buffer  normalise  generator  png   | z-buffer if torch")
    rows = []
    for size in a.sizes:
        if shipped is not None and shipped.cfg.image_size == size:
            gen, name = shipped, f"shipped {shipped.path.name}"
            cfg = RenderConfig.from_dict({**shipped.render.to_dict(), "resolution": size})
        else:
            gen, name = trained_run(size, a.train_steps), f"cvae run trained here ({a.train_steps} steps)"
            cfg = RenderConfig(resolution=size)
        G = gen.nets["G"]
        n_par = sum(p.numel() for p in G.parameters())
        z_dim = G.z_dim
        panel = GeneratorPanel(gen, directions=torch.eye(z_dim)[:2], scales=torch.ones(2)) if z_dim else \
            GeneratorPanel(gen)
        ex = FaceExplorer(model, 15, cfg, panels=[panel])
        ex.widget  # build the widgets: updates now encode PNGs and set the image widgets' values
        faces = model.region(cfg.region).faces
        for threads in a.threads:
            torch.set_num_threads(threads)
            total, cpu, st = [], [], {k: [] for k in ("vertices", "project", "zbuf", "norm", "gen", "png", "zbuf_torch")}
            for i in range(a.updates + 3):
                c = torch.zeros(1, 15)
                c[0, i % 15] = 2.0 if i % 2 else -2.0
                c0 = time.process_time()
                ex.update(c)
                cpu_ms = (time.process_time() - c0) * 1000
                with torch.no_grad():  # the same stages one by one
                    v, t_v = ms(lambda: model.vertices(c, cfg.region, ex.expressions))
                    px, t_p = ms(lambda: to_pixels(v, cfg))
                    (z, m), t_z = ms(lambda: rasterize_depth(px, faces, size, size, cull_backfaces=cfg.cull_backfaces))
                    _, t_zt = ms(lambda: rasterize_depth(px, faces, size, size, cull_backfaces=cfg.cull_backfaces,
                                                         backend="torch"))
                    d, t_n = ms(lambda: normalize_depth(z, m, cfg))
                    face, t_g = ms(lambda: panel(d[:, None], m[:, None].float()))
                    imgs = [to_uint8(d[0]), to_uint8(face)]
                    _, t_png = ms(lambda: [png_bytes(x.repeat(ex.display_scale, 0).repeat(ex.display_scale, 1))
                                           for x in imgs])
                if i >= 3:  # the first updates warm up caches and allocators
                    total.append(ex.last_update_ms)
                    cpu.append(cpu_ms)
                    for k, t in zip(st, (t_v, t_p, t_z, t_n, t_g, t_png, t_zt)):
                        st[k].append(t)
            med = {k: statistics.median(v) for k, v in st.items()}
            rows.append((size, threads, statistics.median(total), max(total), med, name, n_par,
                         statistics.median(cpu)))
    print("generators: " + "; ".join(sorted({f'{r[0]} px: {r[5]}, G {r[6]:,} parameters' for r in rows})))
    print(f"{a.updates} updates per row, a different shape slider each time")
    print(header)
    for size, threads, med_t, max_t, med, _, _, cpu_t in rows:
        print(f"{size:4d} {threads:3d} {med_t:9.1f} {max_t:7.1f} {cpu_t:6.1f}  {'':19}{med['vertices']:8.1f} {med['project']:8.2f} "
              f"{med['zbuf']:9.2f} {med['norm']:10.2f} {med['gen']:10.1f} {med['png']:5.2f}  | {med['zbuf_torch']:.2f}")
    for size, threads, med_t, max_t, med, _, _, _ in rows:
        parts = {k: med[k] for k in ("vertices", "project", "zbuf", "norm", "gen", "png")}
        top = max(parts, key=parts.get)
        print(f"{size} px, {threads} thread(s): median {med_t:.1f} ms = {med_t / 100:.2f}x the 100 ms target "
              f"({'met' if med_t < 100 else 'NOT met'}); largest stage: {top} ({100 * parts[top] / sum(parts.values()):.0f} "
              f"% of the summed stages)")


if __name__ == "__main__":
    main()

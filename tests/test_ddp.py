"""Distributed training: 2 CPU processes (gloo) stay in sync and match one process with the same total batch
(through torchrun); an adversarial mode with replay and the adaptive schedule decides together, keeps a pool per
process and stops together on a NaN (through torch.multiprocessing, with a timeout that catches a hang); every other
mode trains in 2 processes through torchrun with the ranks in sync."""
import os
import subprocess
import sys

import pytest
import torch

ARGS = ["--mode", "l1", "--steps", "3", "--batch-size", "8", "--size", "16", "--width", "8", "--limit", "64",
        "--checkpoint-every", "0", "--sample-every", "0", "--norm", "none", "--dump-params", "--lr", "0.001"]
# norm none: before an instance norm a bias has a zero gradient in exact arithmetic, and Adam turns its round-off
# (which differs with the summation order of the two processes) into full-size steps of random sign


def run(cmd, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


CROSS_ENCODER = ["--mode", "cross-encoder", "--pretrain-steps", "2", "--n-synthetic", "8", "--d-width", "8"]


@pytest.mark.parametrize("mode", ["l1", "cross-encoder"])
def test_two_processes_match_one(tmp_path, mode):
    """The same total batch in one process or two gives the same networks. cross-encoder: its pre-training ran
    before DDP wrapped anything, with no gradient average, so each process pre-trained on half the batch and rank
    1's work was thrown away (issue 23)."""
    from frankenstein_utils.io.paths import REPO_ROOT

    cache = str(tmp_path / "cache")
    env_root = str(REPO_ROOT)
    args = ARGS + (CROSS_ENCODER if mode == "cross-encoder" else [])  # the later --mode wins
    single = [sys.executable, "-m", "frankenstein_utils.train", *args, "--out-dir", str(tmp_path / "one"),
              "--cache-dir", cache]
    ddp = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "frankenstein_utils.train", *args, "--out-dir", str(tmp_path / "two"), "--cache-dir", cache]
    os.environ["PYTHONPATH"] = env_root + os.pathsep + os.environ.get("PYTHONPATH", "")
    run(single, tmp_path)
    run(ddp, tmp_path)
    nets = ["G"] if mode == "l1" else ["G", "DecP", "DecD"]  # the pre-trained ones (D trains after, under DDP)
    for net in nets:
        one = torch.load(tmp_path / "one" / "params_rank0.pt")[net]
        init = torch.load(tmp_path / "one" / "params_init_rank0.pt")[net]
        r0 = torch.load(tmp_path / "two" / "params_rank0.pt")[net]
        r1 = torch.load(tmp_path / "two" / "params_rank1.pt")[net]
        for k in one:
            assert torch.equal(r0[k], r1[k]), f"ranks differ in {net}.{k}"
        flat = lambda sd: torch.cat([v.flatten().double() for v in sd.values()])
        moved = (flat(one) - flat(init)).norm()
        gap = (flat(r0) - flat(one)).norm()
        # only float round-off (the gradient average sums in another order) may differ: measured 7e-8 of 0.12
        assert moved > 0 and gap < 1e-4 * moved, (net, float(gap), float(moved))
    assert (tmp_path / "two" / "checkpoint.pt").exists()  # written by rank 0 only


# ---- an adversarial mode with replay and the adaptive schedule, 2 processes (gloo), driven in-process ---------------
def _worker(rank, store, out, steps, poison_rank, skewed):
    import datetime

    import torch.distributed as dist
    from test_smoke import SMALL, Only, streams
    from test_training import ToyPairs

    from frankenstein_utils.study.variants import variant_config
    from frankenstein_utils.train.trainer import NonFiniteLossError, Trainer

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=30))
    data = streams()
    if rank == poison_rank:
        data["real"] = Only(ToyPairs(16, poison=True), ("image", "index"))
    cfg = variant_config("adaptive", out_dir=str(out / "run"), steps=steps, **{**SMALL, "sample_every": 0},
                         overrides={"adaptive": {"replay_size": 6}})
    t = Trainer(cfg, data)
    if skewed:  # each process sees another margin on its own batch: the decision must still be one
        t.objective._local_margin = lambda r, f, rank=rank: torch.tensor([0.0 if rank == 0 else 2.0])
    try:
        t.fit(progress=False)
        result = {"status": "ok", "history": t.history, "G": t.nets["G"].state_dict(), "D": t.nets["D"].state_dict()}
    except NonFiniteLossError as e:
        result = {"status": "diverged", "message": str(e)}
    torch.save(result, out / f"result{rank}.pt")
    dist.destroy_process_group()


def spawn(tmp_path, steps, poison_rank=-1, skewed=False, timeout=120):
    import time

    import torch.multiprocessing as mp

    store = tmp_path / f"store{time.monotonic_ns()}"
    ctx = mp.spawn(_worker, args=(store, tmp_path, steps, poison_rank, skewed), nprocs=2, join=False)
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail("the processes hung (a collective mismatch or a rank waiting for one that stopped)")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    return [torch.load(tmp_path / f"result{r}.pt", weights_only=False) for r in (0, 1)]


def test_adversarial_ddp_decides_together_and_keeps_every_pool(tmp_path):
    """Under DDP the adaptive margin is all-reduced (ranks that decided alone would take different numbers of D
    steps and deadlock), every process keeps its own replay pool, and every pool is saved and restored."""
    r = spawn(tmp_path, steps=2, skewed=True)
    assert [x["status"] for x in r] == ["ok", "ok"]
    # start at 0: one D step, whose margins 0.0 and 2.0 average to 1.0 >= high: no D step after that
    assert [h["d_steps"] for h in r[0]["history"]] == [1.0, 0.0] == [h["d_steps"] for h in r[1]["history"]]
    for k in r[0]["G"]:
        assert torch.equal(r[0]["G"][k], r[1]["G"][k])
    r = spawn(tmp_path, steps=4)  # resumes from step 2: D trains now, through each rank's own pool
    assert [x["status"] for x in r] == ["ok", "ok"]
    for net in ("G", "D"):
        for k in r[0][net]:
            assert torch.equal(r[0][net][k], r[1][net][k]), (net, k)
    pools = sorted(p.name for p in (tmp_path / "run" / "replay").iterdir())
    assert pools == ["rank0.step00000004.npy", "rank0.step00000004.pt", "rank1.step00000004.npy",
                     "rank1.step00000004.pt"]
    import numpy as np

    a, b = (np.load(tmp_path / "run" / "replay" / f"rank{i}.step00000004.npy") for i in (0, 1))
    assert a.shape == b.shape and a.shape[0] > 0 and not np.array_equal(a, b)  # each rank's own fakes


def test_a_nan_on_one_process_stops_both(tmp_path):
    r = spawn(tmp_path, steps=3, poison_rank=1)
    assert [x["status"] for x in r] == ["diverged", "diverged"]
    assert "loss 'd_real' = nan" in r[1]["message"] and "another process" in r[0]["message"]


def torchrun(tmp_path, *args):
    """Train with ``args`` in 2 processes through torchrun (tiny sizes, 2 steps); each rank's parameters after
    the run, and rank 0's before it."""
    from frankenstein_utils.io.paths import REPO_ROOT

    common = ["--steps", "2", "--batch-size", "4", "--width", "8", "--d-width", "8", "--encoder-width", "8",
              "--limit", "64", "--n-synthetic", "8", "--checkpoint-every", "0", "--sample-every", "0", "--dump-params",
              "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path / "two")]
    os.environ["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "frankenstein_utils.train", *common, *args], tmp_path)
    return [torch.load(tmp_path / "two" / f) for f in ("params_rank0.pt", "params_rank1.pt", "params_init_rank0.pt")]


def weights(sd):
    """The keys of a state dict but BatchNorm running statistics: each process's own until the next forward
    broadcasts rank 0's."""
    return [k for k in sd if "running_" not in k and "num_batches" not in k]


def assert_in_sync_and_trained(r0, r1, init, nets):
    assert sorted(r0) == sorted(nets), sorted(r0)
    for net in nets:
        assert all(torch.equal(r0[net][k], r1[net][k]) for k in weights(r0[net])), f"{net} differs between the ranks"
        assert any(not torch.equal(r0[net][k], init[net][k]) for k in weights(r0[net])), f"{net} did not train"


@pytest.mark.parametrize("mode", ["flagship", "bicyclegan"])
def test_the_peers_with_an_encoder_train_under_torchrun(tmp_path, mode):
    """The flagship and BicycleGAN call their encoder twice per step (photo codes, latent regression on fakes): under
    DDP the second call went through the wrapped, frozen encoder and crashed ("Expected to mark a variable ready
    only once"). Two processes now train and keep equal weights."""
    r0, r1, init = torchrun(tmp_path, "--preset", mode, "--size", "64")
    for net in ("G", "E"):
        assert all(torch.equal(r0[net][k], r1[net][k]) for k in weights(r0[net])), f"{net} differs between the ranks"
        assert any(not torch.equal(r0[net][k], init[net][k]) for k in weights(r0[net])), f"{net} did not train"


# every other mode (training.MODES, flagship.OBJECTIVES) under torchrun: l1 and gan (adaptive) are above, the
# flagship and BicycleGAN just before. A few loss options ride along: wgan-gp's penalty (a double backward through
# the wrapped critic) with l1+gan's 2B fakes, hinge with the full cycle (G and R called twice per step).
EVERY_OTHER_MODE = {
    "cvae": (["--mode", "cvae", "--z-dim", "4", "--size", "16"], ["G", "E"]),
    "gan": (["--mode", "gan", "--size", "16"], ["G", "D"]),
    "gan+recon+cycle": (["--mode", "gan+recon", "--full-cycle", "true", "--gan-loss", "hinge", "--size", "16"],
                        ["G", "D", "R"]),
    "l1+gan-wgan-gp": (["--mode", "l1+gan", "--gan-loss", "wgan-gp", "--size", "16"], ["G", "D"]),
    "cvae-gan": (["--mode", "cvae-gan", "--z-dim", "4", "--size", "16"], ["G", "E", "D"]),
    "cross-encoder": (["--mode", "cross-encoder", "--pretrain-steps", "2", "--size", "16"], ["G", "DecP", "DecD", "D"]),
    "pix2pix": (["--preset", "pix2pix", "--size", "32"], ["G", "D"]),
}


@pytest.mark.parametrize("case", sorted(EVERY_OTHER_MODE))
def test_every_other_mode_trains_under_torchrun(tmp_path, case):
    """Every trainer mode runs in 2 processes (gloo) through torchrun: the run exits 0, every network trains and the
    ranks end with equal weights (an unsynchronised gradient, or a module called outside its DDP wrapper, shows up
    as a rank that drifted)."""
    from frankenstein_utils.objectives.registry import OBJECTIVES
    from frankenstein_utils.train.config import MODES

    covered = {"l1", "gan", "flagship", "bicyclegan"} | {a[a.index("--mode") + 1] if "--mode" in a
                                                           else a[a.index("--preset") + 1]
                                                           for a, _ in EVERY_OTHER_MODE.values()}
    assert covered == set(MODES) | set(OBJECTIVES)  # a new mode must get a case here
    args, nets = EVERY_OTHER_MODE[case]
    r0, r1, init = torchrun(tmp_path, *args)
    assert_in_sync_and_trained(r0, r1, init, nets)
    if case == "cross-encoder":  # the generator's decoder trained after it started from the pre-trained photo decoder
        dec = {k[len("dec."):]: v for k, v in r0["G"].items() if k.startswith("dec.")}
        assert any(not torch.equal(dec[k], r0["DecP"][k]) for k in weights(dec))


# ---- teardown: the process group goes down after every process is done and no DDP wrapper holds it -----------------
def _teardown_worker(rank, port, out, cache):
    import gc
    import json

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from frankenstein_utils.train import cli as train

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2")
    torch.set_num_threads(1)
    seen = {"barriers_after_fit": 0}
    real_destroy, real_barrier = dist.destroy_process_group, dist.barrier

    def barrier(*a, **k):
        real_barrier(*a, **k)
        seen["barriers_after_fit"] += (out / "two" / f"params_rank{rank}.pt").exists()

    def destroy(*a, **k):
        seen["ddp_alive"] = sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())
        seen["checkpoint_written"] = (out / "two" / "checkpoint.pt").exists()
        real_destroy(*a, **k)

    dist.destroy_process_group, dist.barrier = destroy, barrier
    code = train.main([*ARGS, "--out-dir", str(out / "two"), "--cache-dir", cache])
    (out / f"teardown{rank}.json").write_text(json.dumps({"code": code, **seen}))


def test_processes_tear_down_after_all_are_done_and_without_live_wrappers(tmp_path):
    """A torchrun run whose processes had all finished failed in CI: rank 1 aborted at exit ("terminate called
    without an active exception", SIGABRT) while rank 0 still wrote its checkpoint. The process group went down
    while the trainer's DDP wrappers, which hold it, were alive (the group object lived on to interpreter exit),
    and without waiting for the others. Now: a barrier once this process's files are written, then the group goes
    down with no wrapper left."""
    import json
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from frankenstein_utils.io.paths import REPO_ROOT

    os.environ["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    mp.spawn(_teardown_worker, args=(port, tmp_path, str(tmp_path / "cache")), nprocs=2, join=True)
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"teardown{rank}.json").read_text())
        assert seen["code"] == 0, seen
        assert seen["ddp_alive"] == 0, f"rank {rank}: the group went down under {seen['ddp_alive']} live DDP wrappers"
        assert seen["barriers_after_fit"] >= 1, f"rank {rank} did not wait for the others before tearing down"
        assert seen["checkpoint_written"], f"rank {rank} tore down before rank 0 had written its checkpoint"

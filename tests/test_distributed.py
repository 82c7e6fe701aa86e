"""One run trained by several processes: the shards of each global batch, every kind under
DistributedDataParallel, and `torchrun -m model train` itself (killed mid-epoch, resumed, and
compared with one process)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from model import TrainConfig, load_checkpoint
from model.core.labels import UNLABELLED
from model.data.base import Split
from model.data.batches import Shard, batches_per_epoch, global_batches, per_rank_batch_size, shard_indices
from model.runs.checkpoint import ARTEFACTS, CONFIG, MANIFEST, METRICS, TRAINING_STATE, load_training_state
from model.runs.train import TrainingError, train
from model.training.distributed import SINGLE, DistributedError, Processes

from conftest import free_port

# The settings of both launches and of the one-process run they are compared with. 601 training
# images in global batches of 64 end with a batch of 25: 13 images on rank 0, 12 on rank 1.
FLAGS = ["--dataset", "embedded", "--hidden", "32", "--latent-features", "2", "--batch-size", "64",
         "--train-subset", "601", "--eval-k", "10", "--calibration-k", "5", "--seed", "3", "--device", "cpu"]
SETTINGS = dict(dataset="embedded", hidden=(32,), latent_features=2, batch_size=64, train_subset=601, eval_k=10,
                calibration_k=5, seed=3, device="cpu")
LONG_RUN = 100  # epochs of the run that is killed: far more than it can train before it is
# The final test ELBO (and L_10) of 2 processes against 1, in nats per image. The two runs start from
# the same weights (DDP copies rank 0's, built as one process builds them) and take the same steps on
# global batches of the same sizes, but the images come in another order, each process draws its own
# posterior samples, and the all-reduce sums floats in another order. After 2 epochs on this plateau
# (the ELBO rises from about -540 to -490) that noise moved the test ELBO by 0.07, 0.94 and 2.31 nats
# and L_10 by 1.72, 1.39 and 0.27 for seeds 3, 7 and 11 (docs/distributed.md), less than the 12 nats
# between those seeds' one-process runs. 5 nats leaves room for that noise; an evaluation summed over
# one shard is off by hundreds, an epoch too many or too few by about ten or more.
ELBO_TOLERANCE = 5.0


# --- the shards of a global batch ------------------------------------------------------------------

@pytest.mark.parametrize("n, batch_size, world_size", [(1201, 64, 2), (129, 64, 2), (50, 12, 4), (7, 4, 4), (30, 7, 1)])
def test_every_image_is_drawn_once_per_epoch_across_the_ranks(n, batch_size, world_size):
    parts = [shard_indices(n, batch_size, Shard(rank, world_size, seed=5)) for rank in range(world_size)]
    assert len({len(p) for p in parts}) == 1  # every rank takes as many steps
    assert len(parts[0]) == batches_per_epoch(n, batch_size, world_size)
    every = torch.cat([idx for p in parts for idx in p])
    assert torch.equal(every.sort().values, torch.arange(n))
    for step, (start, stop) in enumerate(global_batches(n, batch_size, world_size)):
        sizes = [len(p[step]) for p in parts]
        assert sum(sizes) == stop - start and max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
        if stop - start == batch_size:
            assert sizes == [per_rank_batch_size(batch_size, world_size)] * world_size


def test_the_global_batches_do_not_depend_on_the_number_of_processes():
    # --batch-size is the global batch: two ranks together draw what one process draws, step by step.
    alone = shard_indices(1200, 64, Shard(0, 1, seed=9))
    pair = [shard_indices(1200, 64, Shard(rank, 2, seed=9)) for rank in range(2)]
    for step, batch in enumerate(alone):
        assert torch.equal(torch.cat([pair[0][step], pair[1][step]]), batch)


def test_shards_are_seeded():
    again = shard_indices(100, 10, Shard(1, 2, seed=4))
    assert all(torch.equal(a, b) for a, b in zip(shard_indices(100, 10, Shard(1, 2, seed=4)), again))
    assert not all(torch.equal(a, b) for a, b in zip(shard_indices(100, 10, Shard(1, 2, seed=5)), again))


def test_a_remainder_too_short_to_share_joins_the_batch_before_it():
    assert global_batches(129, 64, 2) == [(0, 64), (64, 129)]  # 1 image cannot be split between 2 ranks
    assert global_batches(130, 64, 2) == [(0, 64), (64, 128), (128, 130)]
    with pytest.raises(ValueError, match="3 images; expected at least one per process \\(4\\)"):
        global_batches(3, 4, 4)


def test_a_global_batch_that_does_not_divide_is_refused_with_what_would():
    with pytest.raises(ValueError, match=r"--batch-size 65 is the global batch .* among 2 processes; "
                                         r"got 65 = 32 × 2 \+ 1 \(try 64 or 66\)"):
        per_rank_batch_size(65, 2)
    with pytest.raises(ValueError, match=r"try 4\)"):
        per_rank_batch_size(3, 4)
    assert per_rank_batch_size(64, 4) == 16


def test_train_refuses_an_indivisible_batch_before_joining_the_processes(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(TrainingError, match="--batch-size 65 is the global batch"):
        train(TrainConfig.of(**{**SETTINGS, "batch_size": 65}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_the_processes_come_from_torchruns_environment():
    assert Processes.from_environment({}) is SINGLE
    assert Processes.from_environment({"WORLD_SIZE": "1", "RANK": "0"}) is SINGLE
    assert Processes.from_environment({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"}) == Processes(3, 4, 1)
    with pytest.raises(DistributedError, match="RANK and LOCAL_RANK are not integers"):
        Processes.from_environment({"WORLD_SIZE": "2"})
    with pytest.raises(DistributedError, match="expected 0 <= RANK < WORLD_SIZE.*got RANK=2, WORLD_SIZE=2"):
        Processes(2, 2, 0)


# --- every kind under DistributedDataParallel ------------------------------------------------------

KIND_CASES = [dict(kind="gaussian"), dict(kind="gaussian", objective="iwae", k=3), dict(kind="categorical"),
              dict(kind="categorical", gaussian_features=2), dict(kind="m2", alpha=1.0), dict(kind="adgm", alpha=1.0)]
SEMI_SUPERVISED = ("m2", "adgm")  # a labelled minibatch every step


def _ddp_steps(rank: int, world_size: int, port: int) -> None:
    """An epoch of every kind in KIND_CASES, in a gloo group of `world_size` processes (torch.multiprocessing)."""
    import torch.distributed as dist

    from model.kinds.registry import build_model, build_objective
    from model.training.distributed import TRAINING_NOISE, data_parallel, stream_seed
    from model.training.loop import epoch_batches, fit_epoch

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=60))
    processes = Processes(rank, world_size, rank)
    images = torch.randint(0, 256, (21, 1, 28, 28), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    labels = torch.arange(21) % 10
    try:
        for case in KIND_CASES:
            config = TrainConfig.of(hidden=(16,), latent_features=2, batch_size=8, grad_clip=1.0, seed=0, **case)
            semi = case["kind"] in SEMI_SUPERVISED
            y = torch.where(torch.arange(21) < 6, labels, UNLABELLED) if semi else labels
            torch.manual_seed(0)
            model = build_model(config)
            objective = build_objective(config)
            parallel = data_parallel(model, objective, torch.device("cpu"))
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
            torch.manual_seed(stream_seed(0, TRAINING_NOISE, 0, rank))
            batches = epoch_batches(config, Split(images, y), "none", Shard(rank, world_size, seed=1))
            step, sums, seen = fit_epoch(model, objective, optimizer, batches, epoch=0, step=0, batches_per_epoch=3,
                                         grad_clip=1.0, parallel=parallel, processes=processes)
            # 21 images in global batches of 8, 8 and 5 (the last shared 3 + 2); M2's 15 unlabelled ones in
            # batches of 8 and 7, each joined by 6 labelled ones (3 on each rank).
            assert (step, seen) == ((2, 15 + 2 * 6) if semi else (3, 21)), (case, step, seen)
            assert all(torch.isfinite(torch.tensor(v)) for v in sums.values()), case
            weights = torch.cat([p.detach().flatten() for p in model.parameters()])
            every = processes.stack(weights)
            assert torch.equal(every[0], every[1]), f"{case}: the ranks' weights differ after an epoch"
    finally:
        dist.destroy_process_group()


def test_every_kind_trains_under_ddp_with_every_rank_holding_the_same_weights():
    # The reducer raises at the next step if a kind leaves a parameter unused; every rank then holds
    # the same weights, since each step applies the same averaged gradient.
    # Forked, not spawned: the children need not import the test suite again (seconds on a small machine).
    torch.multiprocessing.start_processes(_ddp_steps, args=(2, free_port()), nprocs=2, join=True, start_method="fork")


# --- torchrun -m model train --------------------------------------------------------------------------

def _torchrun(out: Path, *flags: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "model", "train", *FLAGS, "--quiet", "--out", str(out), *flags]
    env = {key: value for key, value in os.environ.items() if key not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    return subprocess.Popen(command, env={**env, "VAE_DISTRIBUTED_TIMEOUT": "60"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if parent == pid:
                found.append(int(entry.name))
    return found


def _rank_of(pid: int) -> int | None:
    try:
        variables = (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return None
    return next((int(v[len(b"RANK="):]) for v in variables if v.startswith(b"RANK=")), None)


def _metrics(run: Path) -> list[dict]:
    text = (run / METRICS).read_text() if (run / METRICS).exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory) -> dict:
    """A two-process run of LONG_RUN epochs whose rank 1 is SIGKILLed once epoch 1 is saved, then
    resumed by the same command with --resume --epochs (epochs kept + 1)."""
    if not Path("/proc/self/environ").exists():
        pytest.skip("finding the ranks' processes reads /proc")
    run = tmp_path_factory.mktemp("distributed") / "run"
    launch = _torchrun(run, "--epochs", str(LONG_RUN))
    deadline = time.monotonic() + 240
    while not _metrics(run):
        if launch.poll() is not None:
            pytest.fail(f"torchrun exited before its first epoch ({launch.returncode}):\n{launch.stdout.read()}")
        if time.monotonic() > deadline:
            launch.kill()
            pytest.fail("no epoch was saved within 240 s")
        time.sleep(0.02)
    victims = [pid for pid in _children(launch.pid) if _rank_of(pid) == 1]
    assert len(victims) == 1, f"expected one process of rank 1 under torchrun, got {victims}"
    os.kill(victims[0], signal.SIGKILL)
    killed_at = time.monotonic()
    try:
        returncode = launch.wait(timeout=120)
    except subprocess.TimeoutExpired:
        launch.kill()
        pytest.fail("torchrun did not stop within 120 s of a rank being killed")
    failed = {"returncode": returncode, "seconds": time.monotonic() - killed_at, "log": launch.stdout.read(),
              "files": sorted(p.name for p in run.iterdir()), "metrics": _metrics(run),
              "state_epoch": int(load_training_state(run)["epoch"])}
    epochs = failed["state_epoch"] + 1
    resume = _torchrun(run, "--epochs", str(epochs), "--resume")
    log, _ = resume.communicate(timeout=240)
    assert resume.returncode == 0, log
    return {"run": run, "failed": failed, "epochs": epochs, "resume_log": log}


def test_a_killed_rank_fails_the_run_and_keeps_its_last_epoch(killed_and_resumed):
    failed = killed_and_resumed["failed"]
    assert failed["returncode"] != 0, failed["log"]
    # The last completed epoch, intact: its metrics line, training state and weights; no manifest.
    assert MANIFEST not in failed["files"]
    assert {CONFIG, METRICS, TRAINING_STATE, "model.safetensors"} <= set(failed["files"])
    assert [line["epoch"] for line in failed["metrics"]] == list(range(1, failed["state_epoch"] + 1))
    assert 1 <= failed["state_epoch"] < LONG_RUN
    assert "keeps its last completed epoch" in failed["log"]


def test_resume_completes_the_killed_run(killed_and_resumed):
    run, epochs = killed_and_resumed["run"], killed_and_resumed["epochs"]
    checkpoint = load_checkpoint(run)  # verifies every file against the manifest
    assert checkpoint.manifest["epochs_completed"] == epochs
    assert [line["epoch"] for line in _metrics(run)] == list(range(1, epochs + 1))
    assert "run written to" in killed_and_resumed["resume_log"]  # rank 0's summary, printed once
    assert killed_and_resumed["resume_log"].count("run written to") == 1
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def test_two_processes_reach_the_test_elbo_of_one(killed_and_resumed, tmp_path, monkeypatch):
    # Resuming draws each epoch's streams from the epoch alone, so the resumed run is the run two
    # processes train straight through; one process trains the same settings here.
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    two = killed_and_resumed["run"]
    one = train(TrainConfig.of(**SETTINGS, epochs=killed_and_resumed["epochs"]), tmp_path / "one", progress=False)
    evaluation = {n: json.loads((run / "evaluation.json").read_text()) for n, run in (("one", one), ("two", two))}
    assert abs(evaluation["two"]["test"]["elbo"] - evaluation["one"]["test"]["elbo"]) < ELBO_TOLERANCE, evaluation
    assert abs(evaluation["two"]["iwae"]["log_px"] - evaluation["one"]["iwae"]["log_px"]) < ELBO_TOLERANCE
    assert evaluation["two"]["test"]["images"] == evaluation["one"]["test"]["images"] == 1000

    # The same run directory: the same files, config, metrics and evaluation keys; both load.
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    assert set(ARTEFACTS) - {"background.safetensors"} <= {p.name for p in two.iterdir()}
    assert json.loads((one / CONFIG).read_text()) == json.loads((two / CONFIG).read_text())

    def keys(tree):
        return {k: keys(v) for k, v in tree.items()} if isinstance(tree, dict) else type(tree).__name__

    assert keys(evaluation["one"]) == keys(evaluation["two"])
    lines = {n: _metrics(run) for n, run in (("one", one), ("two", two))}
    assert [keys(line) for line in lines["one"]] == [keys(line) for line in lines["two"]]
    assert [line["step"] for line in lines["one"]] == [line["step"] for line in lines["two"]]
    for run in (one, two):
        checkpoint = load_checkpoint(run)
        assert checkpoint.calibration is not None and checkpoint.classifier is not None


def test_evaluate_under_torchrun_shards_the_test_passes_and_rank_0_alone_writes(killed_and_resumed, tmp_path):
    """`torchrun -m model evaluate RUN` recomputes the evaluation over both processes' shards: every
    test image counted once, the bound within the noise of the training run's own evaluation, one
    summary printed, the manifest rewritten and verifying."""
    run = tmp_path / "run"
    shutil.copytree(killed_and_resumed["run"], run)
    before = json.loads((run / "evaluation.json").read_text())
    env = {key: value for key, value in os.environ.items() if key not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "model", "evaluate", str(run), "--quiet"],
                         env={**env, "VAE_DISTRIBUTED_TIMEOUT": "60"}, capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("run written to") == 1
    after = json.loads((run / "evaluation.json").read_text())
    assert after["test"]["images"] == before["test"]["images"] == 1000
    # Fresh posterior samples: the ELBO and L_10 move by sampling noise only (a shard evaluated
    # alone, or counted twice, would move them by far more, or halve the count above).
    assert abs(after["test"]["elbo"] - before["test"]["elbo"]) < ELBO_TOLERANCE
    assert abs(after["iwae"]["log_px"] - before["iwae"]["log_px"]) < ELBO_TOLERANCE
    load_checkpoint(run)  # the new manifest verifies every file
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]

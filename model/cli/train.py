"""`vae train`: a TrainConfig from flags (every field is one), trained into a run directory.

`torchrun --nproc-per-node N -m model train ...` trains the same run in N processes (docs/distributed.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from model.config.train import TrainConfig, add_train_arguments, train_overrides
from model.data.registry import DATASETS
from model.kinds.registry import KINDS
from model.nets.registry import NETWORKS
from model.runs.checkpoint import CONFIG, is_complete


def register(commands) -> None:
    train = commands.add_parser("train", help="train a model into a run directory")
    add_train_arguments(train, choices={"kind": tuple(KINDS), "arch": tuple(NETWORKS), "dataset": tuple(DATASETS)})
    train.add_argument("--out", required=True, help="run directory to write")
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    train.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    train.add_argument("--skip-if-complete", action="store_true", help="exit 0 if --out holds a complete run")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.add_argument("--threads", type=int, default=0,
                       help="torch CPU threads (default 0: torch's choice; 1 is often faster on a busy machine)")
    train.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # The training stack imports tqdm, scikit-learn and the data loaders; `vae serve` builds this
    # parser too and runs where only the serving dependencies are installed.
    from model.runs.train import summary, train
    from model.training.distributed import Processes

    out = Path(args.out)
    if args.skip_if_complete and is_complete(out):
        print(f"{out} already holds a complete run; nothing to do")
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)  # a runtime knob, not part of the run's config
    overrides = train_overrides(args)
    saved = TrainConfig.load(out / CONFIG) if args.resume and (out / CONFIG).exists() else None
    for key in ("data_dir", "validation_dir"):
        # Recorded absolute, so `vae evaluate`, `bench defects --run` and the service's tools find the
        # images from any working directory; a resumed run keeps its own spelling of the same folder.
        if overrides.get(key):
            given = Path(overrides[key]).expanduser().resolve()
            before = getattr(saved.data, key) if saved is not None else None
            same = before is not None and Path(before).expanduser().resolve() == given
            overrides[key] = before if same else str(given)
    if saved is not None:
        # The saved run's settings, with the flags given; train() refuses any change but --epochs.
        config = saved.replace(**overrides)
    else:
        config = TrainConfig.of(**overrides)
    run_dir = train(config, out, resume=args.resume, overwrite=args.overwrite, progress=not args.quiet)
    if Processes.from_environment().is_main:  # under torchrun only rank 0 has the whole run to report
        print(summary(run_dir))
    return 0

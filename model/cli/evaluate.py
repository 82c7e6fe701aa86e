"""`vae evaluate RUN_DIR`: recompute evaluation.json (and the calibration) of a run.

Under `torchrun --nproc-per-node N -m model evaluate RUN_DIR` the test passes are sharded over the
N processes and reduced; rank 0 alone writes (as `vae train` under torchrun, docs/distributed.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from model.core.compilation import check_available
from model.core.device import device_of, resolve_device
from model.runs.checkpoint import load_model


def register(commands) -> None:
    evaluate = commands.add_parser("evaluate", help="recompute evaluation.json of a run")
    evaluate.add_argument("run_dir")
    evaluate.add_argument("--k", type=int, default=None, help="importance samples (default: the run's eval_k)")
    evaluate.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None,
                          help="where to evaluate (default: the run's device)")
    evaluate.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                          help="torch.compile the bounds (default: as the run was trained; model.core.compilation)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    evaluate.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    # Evaluation imports tqdm, scikit-learn and the data loaders, which `vae serve` must not need.
    from model.data.loading import load_data
    from model.runs.finish import finish
    from model.runs.train import summary

    from model.training.distributed import DistributedError, Processes, joined, process_device

    model, config = load_model(args.run_dir)
    if args.compile is not None:
        config = config.replace(compile=args.compile)
    try:
        processes = Processes.from_environment()  # one process unless torchrun started several
        device = process_device(resolve_device(config.device if args.device is None else args.device), processes)
    except DistributedError as error:
        raise ValueError(str(error)) from None
    if config.compile:
        check_available(device)
    model.to(device)
    data = load_data(config).to(device_of(model))
    with joined(processes, device):
        finish(model, config, data, Path(args.run_dir), k=args.k, progress=not args.quiet and processes.is_main,
               processes=processes)
    if processes.is_main:
        print(summary(args.run_dir))
    return 0

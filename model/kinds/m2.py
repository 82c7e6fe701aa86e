"""The semi-supervised VAE "M2" of Kingma et al. (2014): a class y and a Gaussian style z.

Labelled images contribute the bound L(x, y) on log p(x, y); unlabelled ones the bound U(x) on
log p(x), which sums L(x, y) over the classes weighted by q(y|x) (eq. 7); labelled ones also the
α-weighted classification loss −log q(y|x) (eq. 9). q(y|x) is the classifier the model serves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import Distribution, Categorical, kl_divergence

from model.config.train import ModelConfig, OptimConfig
from model.core.distributions import ReparameterizedDiagonalGaussian, diagonal_gaussian
from model.core.gumbel import gumbel_noise
from model.core.images import check_images
from model.core.labels import UNLABELLED
from model.core.likelihoods import get_likelihood, summed_log_prob
from model.core.noise import GLOBAL_NOISE, Noise, rsample
from model.core.objectives import ElboTerms, check_kl_mode, kl_term, reduce_to
from model.core.schedules import Progress
from model.kinds.base import Capabilities
from model.nets.base import Network
from model.nets.registry import NETWORKS

# Keys of runs written before q(z|x, y) came from the network family (model.nets.mlp.ConditionalMLP).
_LEGACY_KEYS = {"encoder_x.": "encoder.x.", "encoder_y.": "encoder.c.", "encoder_head.": "encoder.head."}


@dataclass(frozen=True)
class LabelledTerms:
    """Terms of the labelled bound L(x, y) ≤ log p(x, y) (Kingma et al. 2014, eq. 6), each of shape (..., B)."""

    log_px: Tensor  # log p(x|y, z), one z ~ q(z|x, y)
    log_py: Tensor  # log p(y)
    kl: Tensor  # KL(q(z|x, y) || p(z)), sampled or analytic

    @property
    def bound(self) -> Tensor:
        return self.log_px + self.log_py - self.kl


class ClassLabels:
    """Labels to indices and one-hot codes, for a kind with a `class_labels` buffer (C,), `num_classes`
    and a `prior_params` buffer (whose dtype the codes take): M2 and the ADGM."""

    def class_index(self, y: Tensor | int) -> Tensor:
        """Indices into `class_labels` of labels `y`, or an error naming the labels the model knows."""
        y = torch.as_tensor(y, device=self.class_labels.device).long()
        match = y.unsqueeze(-1) == self.class_labels  # (..., C)
        if not bool(match.any(-1).all()):
            unknown = sorted(set(y[~match.any(-1)].tolist()))
            raise ValueError(f"expected class labels in {self.class_labels.tolist()}, got {unknown}")
        return match.float().argmax(-1)

    def _one_hot(self, index: Tensor) -> Tensor:
        return F.one_hot(index, self.num_classes).to(self.prior_params.dtype)

    def decode_index(self, z: Tensor, y: Tensor | int | None) -> Tensor:
        """The class index of each of the styles z (N, D) that `decode(z, y)` is given, y one label or N."""
        if z.dim() != 2 or z.shape[1] != self.latent_features:
            raise ValueError(f"expected latents of shape (N, {self.latent_features}), got {tuple(z.shape)}")
        if y is None:
            raise ValueError(f"{self.kind} decodes a style z together with a class: pass y, labels in "
                             f"{self.class_labels.tolist()}")
        index = self.class_index(y)
        if index.dim() == 0:
            index = index.expand(z.shape[0])
        if index.shape != (z.shape[0],):
            raise ValueError(f"expected one label or {z.shape[0]} labels (one per latent), got shape {tuple(index.shape)}")
        return index


class SemiSupervisedVAE(ClassLabels, nn.Module):
    """M2: a generative model of images and their classes that learns from few labels.

    Generative model:  y ~ p(y) = Cat(1/C),  z ~ p(z) = N(0, I),
                       x | y, z ~ Bernoulli(sigmoid(decoder([z, onehot(y)]))).
    Variational family: q(y|x) = Cat(softmax(classifier(x))),
                        q(z|x, y) = N(mu(x, y), diag sigma(x, y)²).

    Classes are the dataset's labels listed in `classes`; methods take and return labels, never
    indices, except where a docstring says so.

    Args:
        input_shape: shape of one image, e.g. (1, 28, 28).
        latent_features: D, the Gaussian style units.
        classes: the class labels, e.g. range(10).
        hidden, activation: hidden widths of the encoders and classifier (the decoder mirrors them).
        network, config: the network family and its config (default: the MLP of `hidden`, `activation`).
    """

    kind: ClassVar[str] = "m2"
    capabilities: ClassVar[Capabilities] = Capabilities(conditional=True, native_classifier=True,
                                                        semi_supervised=True)

    def __init__(self, input_shape: Sequence[int], latent_features: int, classes: Sequence[int] = tuple(range(10)),
                 hidden: Sequence[int] = (256, 128), activation: str = "relu", network: Network | None = None,
                 config: ModelConfig | None = None):
        super().__init__()
        classes = [int(c) for c in classes]
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ValueError(f"expected at least two distinct class labels, got {classes}")
        self.input_shape = tuple(int(d) for d in input_shape)
        self.latent_features = int(latent_features)
        self.num_classes = len(classes)
        self.observation_features = math.prod(self.input_shape)
        network = network or NETWORKS["mlp"]
        config = config or ModelConfig(latent_features=self.latent_features, hidden=tuple(hidden),
                                       activation=activation)
        self.classifier = network.encoder(config, self.input_shape, self.num_classes)
        self.encoder = network.conditional_encoder(config, self.input_shape, self.num_classes,
                                                   2 * self.latent_features)
        self.likelihood = get_likelihood(config.likelihood)  # p(x|z) (model.core.likelihoods)
        self.mixtures = config.mixtures
        self.decoder = network.decoder(config, self.latent_features + self.num_classes,
                                       self.likelihood.parameter_shape(self.input_shape, self.mixtures))
        self.register_buffer("class_labels", torch.tensor(classes, dtype=torch.long))
        self.register_buffer("prior_y_logits", torch.zeros(self.num_classes))
        self.register_buffer("prior_params", torch.zeros(1, 2 * self.latent_features))
        self.register_load_state_dict_pre_hook(_rename_legacy_keys)

    # --- distributions ------------------------------------------------------------------------

    def qy(self, x: Tensor) -> Categorical:
        """q(y|x) over class indices, batch shape (B,)."""
        return Categorical(logits=self.classifier(x.reshape(x.shape[0], *self.input_shape)))

    def py(self) -> Categorical:
        """p(y) = Cat(1/C) over class indices."""
        return Categorical(logits=self.prior_y_logits)

    def posterior(self, x: Tensor, y_one_hot: Tensor) -> ReparameterizedDiagonalGaussian:
        """q(z|x, y) for x (B, ...) and classes one-hot (..., B, C): batch shape (..., B, D)."""
        return diagonal_gaussian(self.encoder(x.reshape(x.shape[0], *self.input_shape), y_one_hot))

    def prior(self, shape: Sequence[int]) -> ReparameterizedDiagonalGaussian:
        """p(z) = N(0, I), batch shape (*shape, D)."""
        mu, log_sigma = self.prior_params.reshape(-1).chunk(2)
        return ReparameterizedDiagonalGaussian(mu.expand(*shape, -1), log_sigma.expand(*shape, -1))

    def observation_model(self, z: Tensor, y_one_hot: Tensor) -> Distribution:
        """p(x|y, z) for z (..., D) and y one-hot (..., C): batch shape (..., *input_shape)."""
        return self.likelihood.build(self.decoder(torch.cat([z, y_one_hot], -1)), self.mixtures)

    def _sample_index(self, logits: Tensor, sample_shape: Sequence[int], noise: Noise) -> Tensor:
        """Class indices (*sample_shape, B) from Categorical(logits (B, C)), by the Gumbel-max trick."""
        return (logits + gumbel_noise(logits, sample_shape, noise)).argmax(-1)

    # --- objectives ---------------------------------------------------------------------------

    def forward(self, x: Tensor, noise: Noise | None = None) -> dict:
        """Every class at once: `{"qy", "py", "qz", "pz", "z", "px"}`, z and px with batch (C, B, ...)."""
        noise = noise or GLOBAL_NOISE
        index = torch.arange(self.num_classes, device=x.device).unsqueeze(1).expand(-1, x.shape[0])  # (C, B)
        y_one_hot = self._one_hot(index)
        qz = self.posterior(x, y_one_hot)
        z = rsample(qz, (), noise)
        return {"qy": self.qy(x), "py": self.py(), "qz": qz, "pz": self.prior(z.shape[:-1]), "z": z,
                "px": self.observation_model(z, y_one_hot)}

    def labelled_terms(self, x: Tensor, index: Tensor, kl: str = "sampled",
                       noise: Noise | None = None) -> LabelledTerms:
        """L(x, y) terms for class indices `index` of shape (..., B) (e.g. (C, B): every class), one z each."""
        check_kl_mode(kl)
        noise = noise or GLOBAL_NOISE
        y_one_hot = self._one_hot(index)  # (..., B, C)
        qz = self.posterior(x, y_one_hot)
        z = rsample(qz, (), noise)  # (..., B, D)
        pz = self.prior(z.shape[:-1])
        px = self.observation_model(z, y_one_hot)
        n = index.dim()
        log_px = summed_log_prob(px, x.expand(*index.shape[:-1], *x.shape), n)
        kl_z = kl_term(qz, pz, z, kl, n)
        return LabelledTerms(log_px=log_px, log_py=self.py().log_prob(index), kl=kl_z)

    def unlabelled_terms(self, x: Tensor, kl: str = "sampled", noise: Noise | None = None,
                         qy: Categorical | None = None) -> ElboTerms:
        """U(x) = Σ_y q(y|x) L(x, y) + H(q(y|x)) ≤ log p(x) (Kingma et al. 2014, eq. 7), as ElboTerms.

        log_px = Σ_y q(y|x) log p(x|y, z_y); kl = Σ_y q(y|x) KL_z(y) + KL(q(y|x) || p(y)), so that
        log_px − kl = U(x).
        """
        qy = qy or self.qy(x)
        index = torch.arange(self.num_classes, device=x.device).unsqueeze(1).expand(-1, x.shape[0])
        terms = self.labelled_terms(x, index, kl, noise)  # each (C, B)
        probs = qy.probs.T  # (C, B)
        kl_y = kl_divergence(qy, Categorical(logits=self.prior_y_logits.expand(x.shape[0], -1)))
        return ElboTerms(log_px=(probs * terms.log_px).sum(0), kl=(probs * terms.kl).sum(0) + kl_y)

    def elbo_terms(self, x: Tensor, kl: str = "sampled", noise: Noise | None = None) -> ElboTerms:
        """The bound on log p(x) of an image whose class is unknown, U(x), per example."""
        x = check_images(x, self.input_shape)
        return self.unlabelled_terms(x, kl, noise)

    # --- the service's face -------------------------------------------------------------------

    def log_weights(self, x: Tensor, num_samples: int, noise: Noise | None = None) -> Tensor:
        """log w_k = log p(x|y_k, z_k) + log p(y_k) + log p(z_k) − log q(y_k|x) − log q(z_k|x, y_k),
        y_k ~ q(y|x), z_k ~ q(z|x, y_k): shape (K, B)."""
        noise = noise or GLOBAL_NOISE
        x = check_images(x, self.input_shape)
        qy = self.qy(x)
        index = self._sample_index(qy.logits, (num_samples,), noise)  # (K, B)
        y_one_hot = self._one_hot(index)
        qz = self.posterior(x, y_one_hot)  # batch (K, B, D)
        z = rsample(qz, (), noise)
        px = self.observation_model(z, y_one_hot)
        log_px = summed_log_prob(px, x.expand(num_samples, *x.shape), 2)
        log_pz = reduce_to(self.prior(z.shape[:-1]).log_prob(z), 2)
        log_qz = reduce_to(qz.log_prob(z), 2)
        return log_px + self.py().log_prob(index) + log_pz - qy.log_prob(index) - log_qz

    def pixel_log_px(self, x: Tensor, num_samples: int, noise: Noise | None = None) -> Tensor:
        """log p(x_i|y_k, z_k) of every subpixel i, y_k ~ q(y|x), z_k ~ q(z|x, y_k): (K, B, *input_shape)."""
        noise = noise or GLOBAL_NOISE
        x = check_images(x, self.input_shape)
        index = self._sample_index(self.qy(x).logits, (num_samples,), noise)  # (K, B)
        y_one_hot = self._one_hot(index)
        z = rsample(self.posterior(x, y_one_hot), (), noise)
        return self.observation_model(z, y_one_hot).log_prob(x.expand(num_samples, *x.shape))

    def classify(self, x: Tensor) -> Tensor:
        """q(y|x): class probabilities (B, C), columns in the order of `class_labels`."""
        return self.qy(check_images(x, self.input_shape)).probs

    def _encode(self, x: Tensor) -> tuple[Categorical, Tensor, ReparameterizedDiagonalGaussian]:
        """q(y|x), its most probable class index ŷ (B,), and q(z|x, ŷ)."""
        x = check_images(x, self.input_shape)
        qy = self.qy(x)
        index = qy.probs.argmax(-1)
        return qy, index, self.posterior(x, self._one_hot(index))

    def features(self, x: Tensor) -> Tensor:
        """Deterministic features: q(y|x) (C) then the mean of q(z|x, ŷ) (D), shape (B, C + D)."""
        qy, _, qz = self._encode(x)
        return torch.cat([qy.probs, qz.mu], -1)

    def encode(self, x: Tensor, num_samples: int = 0, noise: Noise | None = None) -> dict[str, Tensor]:
        """Class `probs` q(y|x) (B, C), the most probable label `y` (B,), `mu`, `sigma` of q(z|x, y) (B, D)
        and, if asked, `z` samples of it (num_samples, B, D)."""
        qy, index, qz = self._encode(x)
        out = {"probs": qy.probs, "y": self.class_labels[index], "mu": qz.mu, "sigma": qz.sigma}
        if num_samples > 0:
            out["z"] = rsample(qz, (num_samples,), noise)
        return out

    def decode(self, z: Tensor, y: Tensor | int | None = None) -> Tensor:
        """Means of p(x|y, z) per pixel (N, *input_shape) for styles z (N, D) and labels y (N,) or one label."""
        return self.observation_model(z, self._one_hot(self.decode_index(z, y))).mean

    def sample(self, n: int, noise: Noise | None = None, y: Tensor | int | None = None) -> dict[str, Tensor]:
        """n samples: styles `z` (n, D) ~ p(z), labels `y` (n,) (given, or drawn from p(y)), decoded `probs`."""
        noise = noise or GLOBAL_NOISE
        if y is None:
            index = self._sample_index(self.prior_y_logits.expand(n, -1), (), noise)
        else:
            index = self.class_index(y)
            index = index.expand(n) if index.dim() == 0 else index
            if index.shape != (n,):
                raise ValueError(f"expected one label or {n} labels, got shape {tuple(index.shape)}")
        z = rsample(self.prior((n,)), (), noise)
        return {"z": z, "y": self.class_labels[index], "probs": self.observation_model(z, self._one_hot(index)).mean}

    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoder means at the most probable class and the mean of q(z|x, ŷ): (B, *input_shape)."""
        _, index, qz = self._encode(x)
        return self.observation_model(qz.mu, self._one_hot(index)).mean

    def describe(self) -> dict:
        """The latent layout, for the service's model description."""
        return {"type": "m2", "likelihood": self.likelihood.name, "latent_features": self.latent_features, "classes": self.class_labels.tolist(),
                "encode_outputs": ["probs", "y", "mu", "sigma"], "decode_inputs": ["z", "y"],
                "classify": "q(y|x)"}


class LabelledObjective:
    """Kingma et al. (2014), eq. 9, per batch: labelled images give −L(x, y) + α·(−log q(y|x)),
    unlabelled ones (label `model.core.labels.UNLABELLED`) give −U(x); the loss is the batch mean.

    The objective of every semi-supervised kind: `loss` is the kind's (model, x, y, α, kl) →
    (loss, diagnostics), e.g. `m2_loss`, or the ADGM's (`model.kinds.adgm.adgm_loss`).
    """

    kind = "m2"

    def __init__(self, config: OptimConfig):
        if config.objective != "elbo":
            raise ValueError(f"objective: --kind {self.kind} trains with 'elbo' (eq. 9), got {config.objective!r}")
        self.alpha = config.alpha
        self.kl = config.kl

    @staticmethod
    def loss(model: nn.Module, x: Tensor, y: Tensor, alpha: float, kl: str):
        return m2_loss(model, x, y, alpha, kl)

    def schedule(self, progress: Progress) -> dict[str, float]:
        return {"alpha": self.alpha}

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, progress: Progress):
        return self.loss(model, x, y, self.alpha, self.kl)



def m2_loss(model: SemiSupervisedVAE, x: Tensor, y: Tensor, alpha: float, kl: str = "sampled",
            noise: Noise | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The M2 loss of a batch with labels `y` (B,), `UNLABELLED` where unknown, and per-example diagnostics.

    Diagnostics: `elbo` (L(x, y) for labelled images, U(x) for the rest), `log_px`, `kl` (with
    elbo = log_px − kl), `labelled` (1 or 0) and `cross_entropy` (−log q(y|x), 0 if unlabelled).
    """
    x = check_images(x, model.input_shape)
    known = y != UNLABELLED
    qy = model.qy(x)
    elbo, log_px, kl_term = (torch.zeros(x.shape[0], device=x.device, dtype=x.dtype) for _ in range(3))
    cross_entropy = torch.zeros_like(elbo)
    if known.any():
        index = model.class_index(y[known])
        terms = model.labelled_terms(x[known], index, kl, noise)
        elbo[known] = terms.bound
        log_px[known] = terms.log_px
        kl_term[known] = terms.kl - terms.log_py
        cross_entropy[known] = -Categorical(logits=qy.logits[known]).log_prob(index)
    if (~known).any():
        terms_u = model.unlabelled_terms(x[~known], kl, noise, Categorical(logits=qy.logits[~known]))
        elbo[~known] = terms_u.elbo
        log_px[~known] = terms_u.log_px
        kl_term[~known] = terms_u.kl
    loss = (-elbo + alpha * cross_entropy).mean()
    with torch.no_grad():
        diagnostics = {"elbo": elbo.detach(), "log_px": log_px.detach(), "kl": kl_term.detach(),
                       "labelled": known.to(x.dtype), "cross_entropy": cross_entropy.detach()}
    return loss, diagnostics


@torch.no_grad()
def evaluate_m2(model: SemiSupervisedVAE, test_x: Tensor, test_y: Tensor, train_y: Tensor,
                batch_size: int = 1000) -> dict:
    """M2's own test classification error, from q(y|x), and how many training labels it had."""
    device = model.class_labels.device
    wrong = 0
    for start in range(0, len(test_x), batch_size):
        x, y = test_x[start:start + batch_size].to(device), test_y[start:start + batch_size].to(device)
        wrong += int((model.class_labels[model.classify(x).argmax(-1)] != y).sum())
    return {"classifier": "q(y|x)", "test_error": wrong / len(test_x), "test_images": len(test_x),
            "training_labels": int((train_y != UNLABELLED).sum()), "training_images": len(train_y)}


def _rename_legacy_keys(module, state_dict, prefix, *args) -> None:
    """Load runs written before the conditional encoder was a network of its own."""
    for key in list(state_dict):
        for old, new in _LEGACY_KEYS.items():
            if key.startswith(prefix + old):
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)


def build(config: ModelConfig, network: Network, input_shape: Sequence[int], class_labels) -> nn.Module:
    return SemiSupervisedVAE(input_shape, config.latent_features, class_labels, config.hidden, config.activation,
                             network, config)

"""The auxiliary deep generative model (ADGM) of Maaløe et al. (2016): M2 with an auxiliary variable a.

The auxiliary a leaves the marginal p(x, y, z) of M2 unchanged but lets the classifier and the
posterior of z depend on a sample of q(a|x), so that q(y, z|x) = ∫ q(a|x) q(y|a, x) q(z|a, y, x) da
is a continuous mixture rather than a factorised Gaussian: a more expressive variational family for
the same generative model. As in `model.kinds.m2`, labelled images contribute −L(x, y), unlabelled
ones −U(x), and labelled ones also α·(−log q(y|a, x)) (Maaløe et al. 2016, eqs. 6, 7 and 9).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, kl_divergence

from model.config.train import ModelConfig
from model.core.distributions import ReparameterizedDiagonalGaussian, diagonal_gaussian
from model.core.gumbel import gumbel_noise
from model.core.images import check_images
from model.core.labels import UNLABELLED
from model.core.likelihoods import get_likelihood, summed_log_prob
from model.core.noise import GLOBAL_NOISE, Noise, rsample
from model.core.objectives import ElboTerms, check_kl_mode, kl_term, reduce_to
from model.kinds.base import Capabilities
from model.kinds.m2 import ClassLabels, LabelledObjective, evaluate_m2
from model.nets.base import Network
from model.nets.registry import NETWORKS

# classify(x) averages q(y|a, x) over this many draws of a ~ q(a|x). The draws' standard-normal noise
# is fixed (seeded once), so classification is deterministic and a row's answer never depends on the
# rows batched with it, as the service requires.
CLASSIFY_SAMPLES = 16
_CLASSIFY_SEED = 0


@dataclass(frozen=True)
class LabelledTerms:
    """Terms of the labelled bound L(x, y) ≤ log p(x, y) at one (a, z) (Maaløe et al. 2016, eq. 6), each (..., B).

    L(x, y) = log p(x|y, z) + log p(y) + log p(a|x, y, z) − log q(a|x) − KL_z,
    a ~ q(a|x), z ~ q(z|a, y, x); KL_z is log q(z|a, y, x) − log p(z) (sampled) or its closed form.
    """

    log_px: Tensor  # log p(x|y, z)
    log_py: Tensor  # log p(y)
    kl_z: Tensor  # KL(q(z|a, y, x) || p(z)), sampled or analytic
    kl_a: Tensor  # log q(a|x) − log p(a|x, y, z), always sampled (p(a|·) depends on z)

    @property
    def kl(self) -> Tensor:
        """Everything but log p(x|y, z) and log p(y): KL_z + KL_a."""
        return self.kl_z + self.kl_a

    @property
    def bound(self) -> Tensor:
        return self.log_px + self.log_py - self.kl


class AuxiliaryDeepGenerativeModel(ClassLabels, nn.Module):
    """ADGM: M2's generative model of images and classes, extended by an auxiliary a.

    Generative model:  y ~ p(y) = Cat(1/C),  z ~ p(z) = N(0, I_D),
                       x | y, z ~ p(x|y, z) (the run's likelihood, e.g. Bernoulli(decoder([z, onehot(y)]))),
                       a | x, y, z ~ N(mu(x, y, z), diag sigma(x, y, z)²)  (A units).
    Variational family: q(a|x) = N(mu(x), diag sigma(x)²),
                        q(y|a, x) = Cat(softmax(classifier(x, a))),
                        q(z|a, y, x) = N(mu(a, y, x), diag sigma(a, y, x)²).

    Classes are the data set's labels listed in `class_labels`; methods take and return labels, not
    indices, except where a docstring says so. Networks come from the run's family: q(a|x) is its
    encoder, q(y|a, x), q(z|a, y, x) and p(a|x, y, z) its conditional encoder (conditioned on a,
    [a, onehot(y)] and [z, onehot(y)]), p(x|y, z) its decoder.

    Args:
        input_shape: shape of one image, e.g. (1, 28, 28).
        latent_features: D, the Gaussian style units z.
        auxiliary_features: A, the auxiliary units a.
        classes: the class labels, e.g. range(10).
        hidden, activation: hidden widths of every network (the decoder mirrors them).
        network, config: the network family and its config (default: the MLP of `hidden`, `activation`).
    """

    kind: ClassVar[str] = "adgm"
    capabilities: ClassVar[Capabilities] = Capabilities(conditional=True, native_classifier=True,
                                                        semi_supervised=True)

    def __init__(self, input_shape: Sequence[int], latent_features: int, auxiliary_features: int,
                 classes: Sequence[int] = tuple(range(10)), hidden: Sequence[int] = (256, 128),
                 activation: str = "relu", network: Network | None = None, config: ModelConfig | None = None):
        super().__init__()
        classes = [int(c) for c in classes]
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ValueError(f"expected at least two distinct class labels, got {classes}")
        if auxiliary_features < 1:
            raise ValueError(f"expected at least one auxiliary unit, got {auxiliary_features}")
        self.input_shape = tuple(int(d) for d in input_shape)
        self.latent_features = int(latent_features)
        self.auxiliary_features = int(auxiliary_features)
        self.num_classes = len(classes)
        network = network or NETWORKS["mlp"]
        config = config or ModelConfig(latent_features=self.latent_features, hidden=tuple(hidden),
                                       activation=activation)
        d, a, c = self.latent_features, self.auxiliary_features, self.num_classes
        self.auxiliary_encoder = network.encoder(config, self.input_shape, 2 * a)  # q(a|x)
        self.classifier = network.conditional_encoder(config, self.input_shape, a, c)  # q(y|a, x)
        self.encoder = network.conditional_encoder(config, self.input_shape, a + c, 2 * d)  # q(z|a, y, x)
        self.auxiliary_decoder = network.conditional_encoder(config, self.input_shape, d + c, 2 * a)  # p(a|x, y, z)
        self.likelihood = get_likelihood(config.likelihood)
        self.mixtures = config.mixtures
        self.decoder = network.decoder(config, d + c, self.likelihood.parameter_shape(self.input_shape,
                                                                                      self.mixtures))  # p(x|y, z)
        self.register_buffer("class_labels", torch.tensor(classes, dtype=torch.long))
        self.register_buffer("prior_y_logits", torch.zeros(c))
        self.register_buffer("prior_params", torch.zeros(1, 2 * d))
        eps = torch.randn(CLASSIFY_SAMPLES, 1, a, generator=torch.Generator().manual_seed(_CLASSIFY_SEED))
        self.register_buffer("classify_eps", eps, persistent=False)  # (S, 1, A), not saved: derived

    def _every_class(self, shape: Sequence[int], device) -> Tensor:
        """Class indices (C, *shape): row c is all c."""
        index = torch.arange(self.num_classes, device=device)
        return index.reshape(-1, *([1] * len(shape))).expand(-1, *shape)

    # --- distributions ------------------------------------------------------------------------

    def _images(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], *self.input_shape)

    def auxiliary_posterior(self, x: Tensor) -> ReparameterizedDiagonalGaussian:
        """q(a|x) for x (B, ...): batch shape (B, A)."""
        return diagonal_gaussian(self.auxiliary_encoder(self._images(x)))

    def qy(self, x: Tensor, a: Tensor) -> Categorical:
        """q(y|a, x) over class indices for x (B, ...) and a (..., B, A): batch shape (..., B)."""
        return Categorical(logits=self.classifier(self._images(x), a))

    def py(self) -> Categorical:
        """p(y) = Cat(1/C) over class indices."""
        return Categorical(logits=self.prior_y_logits)

    def posterior(self, x: Tensor, a: Tensor, y_one_hot: Tensor) -> ReparameterizedDiagonalGaussian:
        """q(z|a, y, x) for x (B, ...), a (..., B, A) and classes one-hot (..., B, C): batch shape (..., B, D)."""
        a = a.expand(*y_one_hot.shape[:-1], a.shape[-1])
        return diagonal_gaussian(self.encoder(self._images(x), torch.cat([a, y_one_hot], -1)))

    def prior(self, shape: Sequence[int]) -> ReparameterizedDiagonalGaussian:
        """p(z) = N(0, I), batch shape (*shape, D)."""
        mu, log_sigma = self.prior_params.reshape(-1).chunk(2)
        return ReparameterizedDiagonalGaussian(mu.expand(*shape, -1), log_sigma.expand(*shape, -1))

    def auxiliary_prior(self, x: Tensor, z: Tensor, y_one_hot: Tensor) -> ReparameterizedDiagonalGaussian:
        """p(a|x, y, z) for x (B, ...), z (..., B, D) and y one-hot (..., B, C): batch shape (..., B, A)."""
        return diagonal_gaussian(self.auxiliary_decoder(self._images(x), torch.cat([z, y_one_hot], -1)))

    def observation_model(self, z: Tensor, y_one_hot: Tensor) -> Distribution:
        """p(x|y, z) for z (..., D) and y one-hot (..., C): batch shape (..., *input_shape)."""
        return self.likelihood.build(self.decoder(torch.cat([z, y_one_hot], -1)), self.mixtures)

    def _sample_index(self, logits: Tensor, noise: Noise) -> Tensor:
        """Class indices (..., B) from Categorical(logits (..., B, C)), by the Gumbel-max trick.

        The noise is drawn batch-first, (B, ..., C), so a request's seeded rows stay its own.
        """
        batch_first = logits.movedim(-2, 0)
        return (batch_first + gumbel_noise(batch_first, (), noise)).argmax(-1).movedim(0, -1)

    # --- objectives ---------------------------------------------------------------------------

    def labelled_terms(self, x: Tensor, a: Tensor, index: Tensor, kl: str = "sampled",
                       noise: Noise | None = None, qa: ReparameterizedDiagonalGaussian | None = None) -> LabelledTerms:
        """L(x, y) terms at auxiliaries a (B, A) ~ q(a|x) for class indices `index` (..., B), one z each.

        `index` of shape (C, B) evaluates every class at the same a (what U(x) needs).
        """
        check_kl_mode(kl)
        noise = noise or GLOBAL_NOISE
        qa = qa or self.auxiliary_posterior(x)
        n = index.dim()
        y_one_hot = self._one_hot(index)  # (..., B, C)
        qz = self.posterior(x, a, y_one_hot)
        z = rsample(qz, (), noise)  # (..., B, D)
        px = self.observation_model(z, y_one_hot)
        log_px = summed_log_prob(px, x.expand(*index.shape[:-1], *x.shape), n)
        kl_z = kl_term(qz, self.prior(z.shape[:-1]), z, kl, n)
        log_pa = reduce_to(self.auxiliary_prior(x, z, y_one_hot).log_prob(a), n)
        log_qa = reduce_to(qa.log_prob(a), 1)  # (B,), the same for every class
        return LabelledTerms(log_px=log_px, log_py=self.py().log_prob(index), kl_z=kl_z, kl_a=log_qa - log_pa)

    def unlabelled_terms(self, x: Tensor, a: Tensor, kl: str = "sampled", noise: Noise | None = None,
                         qa: ReparameterizedDiagonalGaussian | None = None, qy: Categorical | None = None) -> ElboTerms:
        """U(x) = Σ_y q(y|a, x) L(x, y) + H(q(y|a, x)) ≤ log p(x) at a (B, A) ~ q(a|x) (Maaløe et al. 2016, eq. 7).

        As ElboTerms: log_px = Σ_y q(y|a, x) log p(x|y, z_y); kl = Σ_y q(y|a, x) (KL_z + KL_a)(y)
        + KL(q(y|a, x) || p(y)), so that log_px − kl = U(x).
        """
        qy = qy or self.qy(x, a)
        terms = self.labelled_terms(x, a, self._every_class((x.shape[0],), x.device), kl, noise, qa)  # each (C, B)
        probs = qy.probs.T  # (C, B)
        kl_y = kl_divergence(qy, Categorical(logits=self.prior_y_logits.expand(x.shape[0], -1)))
        return ElboTerms(log_px=(probs * terms.log_px).sum(0), kl=(probs * terms.kl).sum(0) + kl_y)

    def elbo_terms(self, x: Tensor, kl: str = "sampled", noise: Noise | None = None) -> ElboTerms:
        """The bound on log p(x) of an image whose class is unknown, U(x), at one a ~ q(a|x), per example."""
        x = check_images(x, self.input_shape)
        qa = self.auxiliary_posterior(x)
        return self.unlabelled_terms(x, rsample(qa, (), noise), kl, noise, qa)

    # --- the service's face -------------------------------------------------------------------

    def log_weights(self, x: Tensor, num_samples: int, noise: Noise | None = None) -> Tensor:
        """Importance weights over (a, z) with y summed out exactly: shape (K, B).

        log w_k = log Σ_y p(x|y, z_ky) p(y) p(z_ky) p(a_k|x, y, z_ky) / q(z_ky|a_k, y, x) − log q(a_k|x),
        a_k ~ q(a|x), z_ky ~ q(z|a_k, y, x) for every class y. E[w_k] = p(x), so log-mean-exp over k
        is a lower bound L_K on log p(x); by Jensen, L_1 ≥ U(x) on average. Classes are taken one at
        a time, so memory is that of K·B samples, as for M2.
        """
        noise = noise or GLOBAL_NOISE
        x = check_images(x, self.input_shape)
        qa = self.auxiliary_posterior(x)
        a = rsample(qa, (num_samples,), noise)  # (K, B, A)
        log_qa = reduce_to(qa.log_prob(a), 2)  # (K, B)
        per_class = []
        for c in range(self.num_classes):
            index = torch.full(a.shape[:-1], c, device=x.device)
            y_one_hot = self._one_hot(index)
            qz = self.posterior(x, a, y_one_hot)  # batch (K, B, D)
            z = rsample(qz, (), noise)
            log_px = summed_log_prob(self.observation_model(z, y_one_hot), x.expand(num_samples, *x.shape), 2)
            log_pz = reduce_to(self.prior(z.shape[:-1]).log_prob(z), 2)
            log_pa = reduce_to(self.auxiliary_prior(x, z, y_one_hot).log_prob(a), 2)
            log_qz = reduce_to(qz.log_prob(z), 2)
            per_class.append(log_px + self.py().log_prob(index) + log_pz + log_pa - log_qz)
        return torch.logsumexp(torch.stack(per_class), 0) - log_qa

    def pixel_log_px(self, x: Tensor, num_samples: int, noise: Noise | None = None) -> Tensor:
        """log p(x_i|y_k, z_k) of every subpixel i, a_k ~ q(a|x), y_k ~ q(y|a_k, x), z_k ~ q(z|a_k, y_k, x):
        (K, B, *input_shape)."""
        noise = noise or GLOBAL_NOISE
        x = check_images(x, self.input_shape)
        a = rsample(self.auxiliary_posterior(x), (num_samples,), noise)  # (K, B, A)
        y_one_hot = self._one_hot(self._sample_index(self.qy(x, a).logits, noise))  # (K, B, C)
        z = rsample(self.posterior(x, a, y_one_hot), (), noise)
        return self.observation_model(z, y_one_hot).log_prob(x.expand(num_samples, *x.shape))

    def _classify(self, x: Tensor) -> Tensor:
        """E_q(a|x)[q(y|a, x)] for checked images x, by CLASSIFY_SAMPLES fixed draws of a: (B, C)."""
        qa = self.auxiliary_posterior(x)
        a = qa.rsample(eps=self.classify_eps.expand(-1, x.shape[0], -1))  # (S, B, A)
        return self.qy(x, a).probs.mean(0)

    def classify(self, x: Tensor) -> Tensor:
        """E_q(a|x)[q(y|a, x)]: class probabilities (B, C), columns in the order of `class_labels`.

        The expectation is a mean over CLASSIFY_SAMPLES draws a = mu + sigma·eps_s whose eps_s are
        fixed, so the same image always gets the same probabilities.
        """
        return self._classify(check_images(x, self.input_shape))

    def _encode(self, x: Tensor):
        """(E[q(y|a, x)] (B, C), its most probable class index ŷ (B,), q(a|x), q(z|ā, ŷ, x) at ā the mean of q(a|x))."""
        x = check_images(x, self.input_shape)
        probs = self._classify(x)
        index = probs.argmax(-1)
        qa = self.auxiliary_posterior(x)
        return probs, index, qa, self.posterior(x, qa.mu, self._one_hot(index))

    def features(self, x: Tensor) -> Tensor:
        """Deterministic features: class probabilities (C), the mean of q(z|ā, ŷ, x) (D), the mean ā of
        q(a|x) (A); shape (B, C + D + A)."""
        probs, _, qa, qz = self._encode(x)
        return torch.cat([probs, qz.mu, qa.mu], -1)

    def encode(self, x: Tensor, num_samples: int = 0, noise: Noise | None = None) -> dict[str, Tensor]:
        """Class `probs` E_q(a|x)[q(y|a, x)] (B, C), the most probable label `y` (B,); `mu`, `sigma` of
        q(z|ā, ŷ, x) (B, D), at ā the mean of q(a|x); `a_mu`, `a_sigma` of q(a|x) (B, A); and, if asked,
        `z` samples of q(z|ā, ŷ, x) (num_samples, B, D)."""
        probs, index, qa, qz = self._encode(x)
        out = {"probs": probs, "y": self.class_labels[index], "mu": qz.mu, "sigma": qz.sigma,
               "a_mu": qa.mu, "a_sigma": qa.sigma}
        if num_samples > 0:
            out["z"] = rsample(qz, (num_samples,), noise)
        return out

    def decode(self, z: Tensor, y: Tensor | int | None = None) -> Tensor:
        """Means of p(x|y, z) per pixel (N, *input_shape) for styles z (N, D) and labels y (N,) or one label.

        a is not needed: it is generated from x, never x from it."""
        return self.observation_model(z, self._one_hot(self.decode_index(z, y))).mean

    def sample(self, n: int, noise: Noise | None = None, y: Tensor | int | None = None) -> dict[str, Tensor]:
        """n samples: styles `z` (n, D) ~ p(z), labels `y` (n,) (given, or drawn from p(y)), decoded `probs`."""
        noise = noise or GLOBAL_NOISE
        if y is None:
            index = self._sample_index(self.prior_y_logits.expand(n, -1), noise)
        else:
            index = self.class_index(y)
            index = index.expand(n) if index.dim() == 0 else index
            if index.shape != (n,):
                raise ValueError(f"expected one label or {n} labels, got shape {tuple(index.shape)}")
        z = rsample(self.prior((n,)), (), noise)
        return {"z": z, "y": self.class_labels[index], "probs": self.observation_model(z, self._one_hot(index)).mean}

    def reconstruct(self, x: Tensor) -> Tensor:
        """Decoder means at the most probable class ŷ and the mean of q(z|ā, ŷ, x): (B, *input_shape)."""
        _, index, _, qz = self._encode(x)
        return self.observation_model(qz.mu, self._one_hot(index)).mean

    def describe(self) -> dict:
        """The latent layout, for the service's model description."""
        return {"type": "adgm", "likelihood": self.likelihood.name, "latent_features": self.latent_features,
                "auxiliary_features": self.auxiliary_features, "classes": self.class_labels.tolist(),
                "encode_outputs": ["probs", "y", "mu", "sigma", "a_mu", "a_sigma"], "decode_inputs": ["z", "y"],
                "classify": f"E_q(a|x)[q(y|a,x)], mean over {CLASSIFY_SAMPLES} fixed draws of a"}


class ADGMObjective(LabelledObjective):
    """Maaløe et al. (2016), eq. 9, per batch: labelled images give −L(x, y) + α·(−log q(y|a, x)),
    unlabelled ones (label `UNLABELLED`) give −U(x), one a ~ q(a|x) each; the loss is the batch mean."""

    kind = "adgm"

    @staticmethod
    def loss(model: nn.Module, x: Tensor, y: Tensor, alpha: float, kl: str):
        return adgm_loss(model, x, y, alpha, kl)


def adgm_loss(model: AuxiliaryDeepGenerativeModel, x: Tensor, y: Tensor, alpha: float, kl: str = "sampled",
              noise: Noise | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The ADGM loss of a batch with labels `y` (B,), `UNLABELLED` where unknown, and per-example diagnostics.

    Every image draws one a ~ q(a|x); its q(y|a, x) weighs U(x)'s classes (unlabelled) or gives the
    classification term −log q(y|a, x), a one-sample estimate of E_q(a|x)[−log q(y|a, x)] (labelled).
    Diagnostics as `model.kinds.m2.m2_loss`: `elbo`, `log_px`, `kl` (elbo = log_px − kl), `labelled`,
    `cross_entropy`.
    """
    x = check_images(x, model.input_shape)
    noise = noise or GLOBAL_NOISE
    known = y != UNLABELLED
    qa = model.auxiliary_posterior(x)
    a = rsample(qa, (), noise)  # (B, A)
    logits = model.qy(x, a).logits  # (B, C)
    elbo, log_px, kl_sum, cross_entropy = (torch.zeros(x.shape[0], device=x.device, dtype=x.dtype) for _ in range(4))
    if known.any():
        index = model.class_index(y[known])
        qa_l = ReparameterizedDiagonalGaussian(qa.mu[known], qa.log_sigma[known])
        terms = model.labelled_terms(x[known], a[known], index, kl, noise, qa_l)
        elbo[known] = terms.bound
        log_px[known] = terms.log_px
        kl_sum[known] = terms.kl - terms.log_py
        cross_entropy[known] = -Categorical(logits=logits[known]).log_prob(index)
    if (~known).any():
        qa_u = ReparameterizedDiagonalGaussian(qa.mu[~known], qa.log_sigma[~known])
        terms_u = model.unlabelled_terms(x[~known], a[~known], kl, noise, qa_u, Categorical(logits=logits[~known]))
        elbo[~known] = terms_u.elbo
        log_px[~known] = terms_u.log_px
        kl_sum[~known] = terms_u.kl
    loss = (-elbo + alpha * cross_entropy).mean()
    with torch.no_grad():
        diagnostics = {"elbo": elbo.detach(), "log_px": log_px.detach(), "kl": kl_sum.detach(),
                       "labelled": known.to(x.dtype), "cross_entropy": cross_entropy.detach()}
    return loss, diagnostics


@torch.no_grad()
def evaluate_adgm(model: AuxiliaryDeepGenerativeModel, test_x: Tensor, test_y: Tensor, train_y: Tensor) -> dict:
    """The ADGM's own test classification error, from E_q(a|x)[q(y|a, x)], and its training labels."""
    return {**evaluate_m2(model, test_x, test_y, train_y), "classifier": "E_q(a|x)[q(y|a,x)]"}


def build(config: ModelConfig, network: Network, input_shape: Sequence[int], class_labels) -> nn.Module:
    auxiliary = config.auxiliary_features or config.latent_features
    return AuxiliaryDeepGenerativeModel(input_shape, config.latent_features, auxiliary, class_labels, config.hidden,
                                        config.activation, network, config)

"""Observation models p(x|z): what a decoder's output means as a distribution over images.

A likelihood (`--likelihood`, the registry `LIKELIHOODS`) says how many decoder outputs each
subpixel needs and turns them into a `torch.distributions.Distribution` over images in [0, 1]
with `log_prob(x)` and `mean`. The decoder's output has `parameters_per_channel × C` channels.

- bernoulli: the course's; grey levels are soft targets, so it is no proper distribution over
  8-bit images and its bits/dim are not those of the literature.
- logistic: a discretized mixture of logistics over the 256 levels of an 8-bit subpixel
  (Salimans et al. 2017, PixelCNN++, without the channel coupling): a proper discrete
  distribution, so −log p(x) / (D ln 2) is the bits/dim papers report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Bernoulli, Distribution, constraints

LEVELS = 256  # 8-bit images: the bins of the discretized logistic
LOG_SCALE_MIN = -8.0  # PixelCNN++'s e^-7 on [-1, 1], halved for [0, 1]: a level can take 99 % of the mass


class SoftBernoulli(Bernoulli):
    """torch's Bernoulli(logits), with `summed_log_prob`: log p(x|z) summed over the pixels, fast.

    log p(x|l) = Σ_i x_i l_i − softplus(l_i) (the same as −BCE with logits). When x is one image
    per row broadcast over K samples (`x.expand(K, *x.shape)`, as the importance-weighted bound
    does), Σ_i x_i l_i is a batched matrix product against the one copy of x, so only softplus(l)
    is an elementwise pass over the K·B·D logits (instead of the several of BCE). Always in fp32.
    """

    def summed_log_prob(self, x: Tensor, ndim: int) -> Tensor:
        """Σ over every dimension after the first `ndim` of log p(x|z); x of the logits' shape."""
        logits = self.logits
        if tuple(x.shape) != tuple(logits.shape):
            return reduce_sum(self.log_prob(x), ndim)
        with torch.autocast(logits.device.type, enabled=False):
            logits = logits.float()
            x = x.to(logits.dtype)
            # Leading dimensions x is only broadcast along (stride 0): K samples of the same images.
            shared = 0
            while shared < ndim - 1 and x.stride(shared) == 0:
                shared += 1
            rows = logits.flatten(ndim)  # (*lead, D)
            if shared:
                lead = rows.shape[:-1]
                images = x[(0,) * shared].flatten(ndim - shared)  # (*lead[shared:], D)
                dot = torch.bmm(rows.reshape(-1, images[..., 0].numel(), rows.shape[-1]).transpose(0, 1),
                                images.reshape(-1, rows.shape[-1], 1)).squeeze(-1).t().reshape(lead)
            else:
                dot = (x.flatten(ndim) * rows).sum(-1)
            return dot - F.softplus(rows).sum(-1)


def reduce_sum(values: Tensor, ndim: int) -> Tensor:
    """Sum over every dimension after the first `ndim` (as `model.core.objectives.reduce_to`)."""
    return values.flatten(ndim).sum(-1) if values.dim() > ndim else values


def summed_log_prob(px: Distribution, x: Tensor, ndim: int) -> Tensor:
    """log p(x|z) summed over every dimension after the first `ndim`: the distribution's own fast
    sum where it has one (`SoftBernoulli`), else its log_prob summed."""
    fast = getattr(px, "summed_log_prob", None)
    return fast(x, ndim) if fast is not None else reduce_sum(px.log_prob(x), ndim)


def bernoulli(logits: Tensor) -> Bernoulli:
    """p(x|z) = Bernoulli(logits): each pixel's grey level is the probability of ink.

    Grey levels in [0, 1] are soft targets, outside Bernoulli's support, so validation is off
    (the course does the same); `log_prob(x)` is then −BCE(x, sigmoid(logits)).
    """
    return SoftBernoulli(logits=logits, validate_args=False)


def _log_sigmoid_difference(a: Tensor, b: Tensor) -> Tensor:
    """log(σ(a) − σ(b)) for a > b, without cancellation: log σ(a) − softplus(b) + log(1 − e^(b−a))."""
    return F.logsigmoid(a) - F.softplus(b) + torch.log(-torch.expm1(b - a))


class DiscretizedLogisticMixture(Distribution):
    """Each subpixel x ∈ {0, 1/255, …, 1} ~ Σ_k π_k · Logistic(μ_k, s_k) integrated over x's bin.

    Bins are 1/255 wide around each level; the edge bins extend to ±∞, so the 256 probabilities
    sum to one. Args (each (..., K, C, H, W)): logits of π, means μ, log scales log s.
    `mean` is Σ_k π_k clamp(μ_k, 0, 1), the means of the components as images (it ignores the
    mass the edge bins gather, which is what a decoded picture should show).
    """

    arg_constraints = {"logits": constraints.real, "means": constraints.real, "log_scales": constraints.real}
    support = constraints.unit_interval
    has_rsample = False

    def __init__(self, logits: Tensor, means: Tensor, log_scales: Tensor):
        self.logits = logits.log_softmax(-4)
        self.means = means
        self.log_scales = log_scales.clamp(min=LOG_SCALE_MIN)
        super().__init__(batch_shape=means.shape[:-4] + means.shape[-3:], validate_args=False)

    @property
    def mean(self) -> Tensor:
        return (self.logits.exp() * self.means.clamp(0, 1)).sum(-4).clamp(0, 1)  # exact in [0, 1] despite rounding

    def log_prob(self, x: Tensor) -> Tensor:
        x = x.unsqueeze(-4)  # (..., 1, C, H, W) against the K components
        half_bin = 0.5 / (LEVELS - 1)
        inv_scale = torch.exp(-self.log_scales)
        upper = inv_scale * (x + half_bin - self.means)
        lower = inv_scale * (x - half_bin - self.means)
        level = torch.round(x * (LEVELS - 1))
        log_mass = torch.where(level <= 0, F.logsigmoid(upper),  # P(X ≤ upper edge of bin 0)
                               torch.where(level >= LEVELS - 1, -F.softplus(lower),  # P(X > lower edge of 255)
                                           _log_sigmoid_difference(upper, lower)))
        return torch.logsumexp(self.logits + log_mass, dim=-4)

    def sample(self, sample_shape=torch.Size()) -> Tensor:
        with torch.no_grad():
            shape = torch.Size(sample_shape) + self.means.shape
            component = torch.distributions.Categorical(logits=self.logits.movedim(-4, -1)).sample(sample_shape)
            pick = F.one_hot(component, self.means.shape[-4]).movedim(-1, -4).to(self.means.dtype)
            u = torch.rand(shape, device=self.means.device).clamp(1e-5, 1 - 1e-5)
            draws = self.means + torch.exp(self.log_scales) * (torch.log(u) - torch.log1p(-u))
            value = (pick * draws).sum(-4)
            return torch.round(value.clamp(0, 1) * (LEVELS - 1)) / (LEVELS - 1)


def discretized_logistic(parameters: Tensor, components: int) -> DiscretizedLogisticMixture:
    """The mixture from decoder outputs (..., 3K·C, H, W) (K = 1: (..., 2C, H, W), no mixture logits)."""
    per = 2 if components == 1 else 3
    c = parameters.shape[-3] // (per * components)
    p = parameters.unflatten(-3, (per, components, c))  # (..., per, K, C, H, W)
    if components == 1:
        means, log_scales = p.unbind(-5)
        logits = torch.zeros_like(means)
    else:
        logits, means, log_scales = p.unbind(-5)
    # The decoder's means start near 0; centre them on mid-grey so training starts in range.
    return DiscretizedLogisticMixture(logits, means + 0.5, log_scales)


@dataclass(frozen=True)
class Likelihood:
    """One observation model (a registry entry of `LIKELIHOODS`).

    parameters_per_channel: decoder outputs per subpixel, given the mixture size K.
    build: (decoder output, K) -> the distribution over images.
    bernoulli: it is the course's soft-target Bernoulli (scores relying on that check this).
    """

    name: str
    parameters_per_channel: Callable[[int], int]
    build: Callable[[Tensor, int], Distribution]
    description: str
    bernoulli: bool = False

    def parameter_shape(self, input_shape: Sequence[int], components: int = 1) -> tuple[int, ...]:
        """The decoder's output shape for images of `input_shape` (C, H, W)."""
        c, *rest = input_shape
        return (self.parameters_per_channel(components) * c, *rest)


LIKELIHOODS: dict[str, Likelihood] = {lik.name: lik for lik in (
    Likelihood("bernoulli", lambda k: 1, lambda out, k: bernoulli(out),
               "Bernoulli with grey levels as soft targets (the course)", bernoulli=True),
    Likelihood("logistic", lambda k: 2 if k == 1 else 3 * k, discretized_logistic,
               "discretized logistic mixture over 8-bit levels (Salimans et al. 2017)"),
)}


def get_likelihood(name: str) -> Likelihood:
    try:
        return LIKELIHOODS[name]
    except KeyError:
        raise ValueError(f"unknown likelihood {name!r}; expected one of {sorted(LIKELIHOODS)}") from None


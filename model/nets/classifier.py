"""The latent-feature classifier of exercise 2.4: logistic regression on encoder means, as tensors.

Fitted with scikit-learn at training time (`model.evaluation.classifier`); stored and evaluated as
plain tensors, so serving needs neither scikit-learn nor pickle.
"""

from __future__ import annotations

from torch import Tensor, nn


class LinearSoftmaxClassifier(nn.Module):
    """p(y | f) = softmax(W · (f − mean) / scale + b): multinomial logistic regression.

    Args:
        weight: (C, F); bias: (C,); mean, scale: (F,) standardisation; classes: (C,) labels.
    """

    def __init__(self, weight: Tensor, bias: Tensor, mean: Tensor, scale: Tensor, classes: Tensor):
        super().__init__()
        self.register_buffer("weight", weight.float())
        self.register_buffer("bias", bias.float())
        self.register_buffer("mean", mean.float())
        self.register_buffer("scale", scale.float())
        self.register_buffer("classes", classes.long())

    @property
    def num_features(self) -> int:
        return self.weight.shape[1]

    def forward(self, features: Tensor) -> Tensor:
        """Class probabilities (B, C) for features (B, F)."""
        if features.dim() != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"expected features of shape (B, {self.num_features}), got {tuple(features.shape)}")
        logits = ((features - self.mean) / self.scale) @ self.weight.T + self.bias
        return logits.softmax(-1)

    def predict(self, features: Tensor) -> Tensor:
        return self.classes[self(features).argmax(-1)]

    def state_tensors(self) -> dict[str, Tensor]:
        return {name: buf.detach().cpu().contiguous() for name, buf in self.named_buffers()}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> "LinearSoftmaxClassifier":
        return cls(**{k: tensors[k] for k in ("weight", "bias", "mean", "scale", "classes")})

"""Fitting the latent-feature classifier (exercise 2.4) with scikit-learn, into tensors."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from model.nets.classifier import LinearSoftmaxClassifier


def fit_logistic_regression(features: np.ndarray, labels: np.ndarray, max_iter: int = 1000,
                            seed: int = 0) -> LinearSoftmaxClassifier:
    """Fit multinomial logistic regression on standardised features (scikit-learn, L2, lbfgs)."""
    mean = features.mean(0)
    scale = features.std(0)
    scale[scale < 1e-8] = 1.0  # constant features (blank pixels) carry no information
    model = LogisticRegression(max_iter=max_iter, random_state=seed)
    model.fit((features - mean) / scale, labels)
    weight, bias = model.coef_, model.intercept_
    if weight.shape[0] == 1:  # scikit-learn keeps one row for two classes: softmax([0, w·x + b])
        weight = np.concatenate([np.zeros_like(weight), weight])
        bias = np.concatenate([np.zeros_like(bias), bias])
    return LinearSoftmaxClassifier(
        torch.from_numpy(weight), torch.from_numpy(bias), torch.from_numpy(mean),
        torch.from_numpy(scale), torch.from_numpy(model.classes_.astype(np.int64)),
    )

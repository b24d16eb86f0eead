"""The linear probes of ITI-c and DSAS: a seeded stratified split, and logistic regression on
standardised inputs (plain for ITI's direction, after PCA for DSAS's gates), mapped back to raw
activation space. scikit-learn fits; this module only prepares inputs and reads weights."""

from __future__ import annotations

import math

import numpy as np
import torch
from sklearn.decomposition import PCA
from jaxtyping import Float
from sklearn.linear_model import LogisticRegression

from .base import SteerError

MAX_ITER = 5000  # lbfgs on standardised inputs converges in far fewer steps


def stratified_split(n_pos: int, n_neg: int, frac: float, seed: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of ``[positives; negatives]`` rows into (fit, validation)
    indices: ``ceil(frac·n)`` of each class (at least 1, at most n − 1) are held out."""
    gen = torch.Generator().manual_seed(seed)
    fit, val = [], []
    for offset, n in ((0, n_pos), (n_pos, n_neg)):
        order = (torch.randperm(n, generator=gen) + offset).tolist()
        k = min(max(1, math.ceil(frac * n)), n - 1)
        val += order[:k]
        fit += order[k:]
    return np.array(fit), np.array(val)


def standardised_logistic(x: np.ndarray, y: np.ndarray, C: float, seed: int):
    """A logistic probe on standardised ``x``; returns it and the standardisation (μ, s)."""
    mu, sd = x.mean(0), x.std(0)
    sd = np.where(sd > 0, sd, 1.0)  # constant units: any scale works, their weight is ~0
    clf = LogisticRegression(C=C, max_iter=MAX_ITER, random_state=seed)
    return clf.fit((x - mu) / sd, y), mu, sd


def pca_logistic(x: np.ndarray, y: np.ndarray, n_components: int, C: float,
                 seed: int) -> tuple[np.ndarray, float, int]:
    """PCA → standardised scores → logistic regression, folded into ``logit = u·x + c``;
    returns ``(u, c, components used)``."""
    r = max(1, min(n_components, len(x) - 1, x.shape[1]))
    pca = PCA(n_components=r, random_state=seed).fit(x)
    scores = pca.transform(x)
    sd = scores.std(0)
    sd = np.where(sd > 1e-12, sd, 1.0)
    clf = LogisticRegression(C=C, max_iter=MAX_ITER, random_state=seed).fit(scores / sd, y)
    u = pca.components_.T @ (clf.coef_[0] / sd)
    return u, float(clf.intercept_[0] - pca.mean_ @ u), r


def fit_gate(src: Float[torch.Tensor, "n d"], ctl: Float[torch.Tensor, "m d"],
             n_components: int = 5, C: float = 1.0, val_fraction: float = 0.25,
             seed: int = 0) -> tuple[torch.Tensor, float, dict]:
    """``(u, c, stats)`` of a source(1)-vs-control(0) probe on pooled activations. ``stats``:
    ``accuracy`` (held out), ``train_accuracy`` (final probe, all samples), ``n_components``."""
    if min(len(src), len(ctl)) < 2:
        raise SteerError("dsas needs at least 2 source and 2 control texts (one of each is "
                         "held out to measure probe accuracy)")
    x = torch.cat([src, ctl]).double().numpy()
    y = np.r_[np.ones(len(src)), np.zeros(len(ctl))]
    fit, val = stratified_split(len(src), len(ctl), val_fraction, seed)
    u_f, c_f, _ = pca_logistic(x[fit], y[fit], n_components, C, seed)
    accuracy = float(((x[val] @ u_f + c_f > 0) == y[val]).mean())
    u, c, r = pca_logistic(x, y, n_components, C, seed)
    train_acc = float(((x @ u + c > 0) == y).mean())
    return torch.from_numpy(u), c, {"accuracy": accuracy, "train_accuracy": train_acc,
                                    "n_components": r}

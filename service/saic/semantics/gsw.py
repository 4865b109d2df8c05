"""Gradient-based semantic weights (GSW) for the classifier's last feature map.

SAIC weights each feature channel k by how much the class score y_c depends on it, the
Grad-CAM channel weight  alpha_k^c = 1/(h*w) * sum_ij  d y_c / d A_k(i,j).
Our classifiers end in global-average-pool + linear, y_c = sum_k W[c,k] * mean_ij A_k(i,j) + b_c,
so d y_c / d A_k(i,j) = W[c,k]/(h*w) at every position and alpha_k^c = W[c,k]/(h*w): closed
form, no autograd needed at run time (`gradcam_alpha`; tests check it against torch autograd).

Weights used in distortions (`gsw_weights`): the positive part, normalised to sum to 1,
    g_k = max(W[c,k], 0) / sum_j max(W[c,j], 0).
Why: (1) Grad-CAM keeps only positive evidence (its ReLU); a channel with a negative weight
argues *against* class c, and a negative weight in a distortion would reward destroying
it. (2) Summing to 1 makes the weighted distortion a weighted *average*, so its scale does
not depend on the class or on how large the head's weights happen to be.  The constant
1/(h*w) cancels in the normalisation.  c is the true class when known, else the class the
classifier predicts for the *original* image (the decoded image must keep what the original
shows, not what a distorted version may suggest).
"""

from __future__ import annotations

import numpy as np


def gradcam_alpha(head_weight: np.ndarray, classes: np.ndarray, hw: int) -> np.ndarray:
    """Raw Grad-CAM channel weights (N,C) = W[c_n, k] / hw for a GAP+linear head."""
    return head_weight[np.asarray(classes, np.int64)].astype(np.float64) / hw


def gsw_weights(head_weight: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """GSW (N,C): positive part of W[c_n] normalised to sum 1 (uniform if no weight is positive)."""
    w = np.maximum(head_weight[np.asarray(classes, np.int64)].astype(np.float64), 0.0)
    s = w.sum(axis=1, keepdims=True)
    uniform = np.full_like(w, 1.0 / w.shape[1])
    return np.where(s > 0, w / np.where(s > 0, s, 1.0), uniform)


def cam(features: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Grad-CAM heat map (N,h,w) = ReLU(sum_k g_k A_k), for inspection and the docs."""
    return np.maximum(np.einsum("nc,nchw->nhw", weights, features.astype(np.float64)), 0.0)

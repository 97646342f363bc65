"""Table 1's five metrics, computed with scikit-learn as the study's repository does.

Scores are sigmoid probabilities; a label is predicted at p >= 0.5 (logit >= 0, f = tanh(z/2) >= 0).
"Average precision" in the study's Table 1 is scikit-learn's label-ranking average precision
(LRAP, per instance), not mAP: we report both (``average_precision`` = LRAP, ``mAP`` = mean over
labels with at least one positive of the per-label average precision, as in ML-GCN's logs).
Macro-F1 uses zero_division=0: a label with no true and no predicted positive scores 0.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn import metrics as skm

KEYS = ("hamming_loss", "ranking_loss", "average_precision", "micro_f1", "macro_f1")


def table1(logits: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray) -> dict[str, float]:
    z = torch.as_tensor(logits).double()
    y = np.asarray(torch.as_tensor(targets).cpu().numpy() > 0.5, dtype=np.int64)
    prob = torch.sigmoid(z).cpu().numpy()
    pred = (z >= 0).cpu().numpy().astype(np.int64)
    has_pos = y.sum(0) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ap = skm.average_precision_score(y[:, has_pos], prob[:, has_pos], average=None) if has_pos.any() else []
    return {
        "hamming_loss": float(skm.hamming_loss(y, pred)),
        "ranking_loss": float(skm.label_ranking_loss(y, prob)),
        "average_precision": float(skm.label_ranking_average_precision_score(y, prob)),
        "micro_f1": float(skm.f1_score(y, pred, average="micro", zero_division=0)),
        "macro_f1": float(skm.f1_score(y, pred, average="macro", zero_division=0)),
        "mAP": float(np.mean(ap)) if len(ap) else float("nan"),
        "num_samples": int(y.shape[0]),
    }

"""How much to trust a mask: one number in [0, 1] per cut-out, from the model's own outputs.

    confidence = decisiveness x sqrt(agreement) x (1 - frame contact)

- decisiveness: the mean of |2p - 1| over the subject's band (every pixel the mask gives more than
  BAND_FLOOR): 1 when the edge is crisp, lower the more of the subject is left half transparent
  (the network could not decide).
- agreement: soft IoU (sum of the per-pixel minimum / sum of the maximum) of the two masks a model
  already computes: falcon's IS-Net and U2-Netp, aurora's photo and mirror-image passes. Two
  views that disagree on what the subject is cannot both be right. 1 for ghost (one network).
- frame contact: the share of the frame's outer ring the mask covers (at >= 0.5). A subject that
  runs off the frame is often background taken for subject (a wall, a second subject behind it).

All three are computed on the operating-resolution masks (at most 1024 x 1024 floats): a few
milliseconds, against hundreds for the request. bench/quality.py --confidence measures its rank
correlation with the true IoU on the composite set (docs/models.md, "Confidence and model=auto").
"""

from __future__ import annotations

import numpy as np

BAND_FLOOR = 0.05
RING = 2  # pixels of the frame's edge, at the operating resolution


def decisiveness(mask: np.ndarray) -> float:
    band = mask > BAND_FLOOR
    if not band.any():
        return 0.0
    return float(np.abs(mask[band] * 2.0 - 1.0).mean())


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    union = float(np.maximum(a, b).sum())
    return float(np.minimum(a, b).sum()) / union if union > 0 else 1.0


def frame_contact(mask: np.ndarray) -> float:
    ring = np.concatenate(
        [mask[:RING].ravel(), mask[-RING:].ravel(), mask[RING:-RING, :RING].ravel(), mask[RING:-RING, -RING:].ravel()]
    )
    return float((ring >= 0.5).mean()) if ring.size else 0.0


def score(mask: np.ndarray, first: np.ndarray | None = None, second: np.ndarray | None = None) -> float:
    """`mask`: the model's final [0, 1] mask at its operating resolution; `first`, `second`: the two
    views it was joined from (per-pixel max), when the model has two, each [0, 1] and of its shape."""
    agree = agreement(first, second) if first is not None and second is not None else 1.0
    value = decisiveness(mask) * float(np.sqrt(agree)) * (1.0 - frame_contact(mask))
    return min(1.0, max(0.0, value))

"""RMSprop as in the authors' MATLAB `optimizer/RMSprop.m` (no momentum)."""
from __future__ import annotations

import math

import numpy as np

from hil.errors import ConfigError


class RMSprop:
    """ms <- decay*ms + (1-decay)*g**2;  dW = -lr * g / (sqrt(ms) + eps).

    `deltas` returns the signed change of every weight without applying it (on the array the
    change becomes gate-voltage updates); `step` applies it to a dict of arrays in place."""

    def __init__(self, lr: float = 0.01, decay: float = 0.9, eps: float = 1e-8) -> None:
        for name, v, ok in (("lr", lr, lr > 0), ("decay", decay, 0 <= decay < 1),
                            ("eps", eps, eps > 0)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and ok):
                raise ConfigError(f"RMSprop {name}={v!r} is invalid: need a finite lr > 0, "
                                  "0 <= decay < 1 and eps > 0")
        self.lr, self.decay, self.eps = float(lr), float(decay), float(eps)
        self.ms: dict[str, np.ndarray] = {}

    def deltas(self, grads: dict) -> dict:
        """Update the mean squares with `grads` and return the weight changes."""
        out = {}
        for k, g in grads.items():
            ms = self.ms.setdefault(k, np.zeros_like(g, dtype=np.float64))
            ms *= self.decay
            ms += (1.0 - self.decay) * np.square(g)
            out[k] = -self.lr * g / (np.sqrt(ms) + self.eps)
        return out

    def step(self, params: dict, grads: dict) -> dict:
        """Apply the changes to `params` in place; returns them."""
        d = self.deltas(grads)
        for k, v in d.items():
            params[k] += v
        return d

    def state(self) -> dict:
        """Copy of the mean squares (for a journal; restore with `load_state`)."""
        return {k: v.copy() for k, v in self.ms.items()}

    def load_state(self, state: dict) -> None:
        self.ms = {k: np.array(v, dtype=np.float64) for k, v in state.items()}

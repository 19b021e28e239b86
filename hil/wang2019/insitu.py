"""A Wang 2019 network on the array: forward through amplitude VMMs, backward in software from
the last read-back conductances, open-loop gate-voltage updates of every cell (PAPERS.md §B).

Each weight W[i, o] is four cells of one column (`hil.wang2019.placement`): the (+, −) pair of
copy 1 and of copy 2 on adjacent good rows. One weight unit is `STEP_S` = 100 µS of pair
difference.

Forward: a layer's input vectors go through `Crossbar.vmm_amplitude`, one call per placement
tile; the + row of a pair is driven at +V and the − row at −V, so a column carries
Σ_i V_i Σ_copies (G+ − G−): the two copies are averaged by halving it. Inputs are scaled **per
sample** so that its largest |x| is `V_IN` = 0.2 V, as the authors do for the dense layers; for
the convolutions (and the ConvLSTM's [x; h] patches) we apply the same rule to the sample's whole
input map — every patch of one image shares one scale, the image's largest |input| — because the
authors' convolution code is not public and one scale per image keeps the conv a single linear map
per sample (the outputs are divided by the scale afterwards). The ADC full scale of every call is
`ADC_HEADROOM` × the largest |column current| the host expects from the last read-back
conductances (auto-ranging; a saturated code is counted).

Backward: the network twin's `backward` with the weights of the last read-back (copies averaged)
and the activations stored by the array forward pass. Update: RMSprop deltas turned into gate
voltages on every cell of every pair, both copies alike, by `hil.analog.update.UpdateEngine` with
the `OpenLoopGate` policy (RESET where ΔV_g < 0, then SET at clip(V_g,last + ΔV_g)); all cells in
one RESET and one SET call, then every used cell read back.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from hil.analog.update import OpenLoopGate, UpdateEngine
from hil.crossbar import Crossbar
from hil.errors import ConfigError, DataError
from hil.geometry import Cells
from hil.wang2019.nets import WangCNN, WangConvLSTM
from hil.wang2019.placement import MINUS, PLUS, Placement

G_PER_V_S = 200e-6 / 1.1  # S/V: nominal slope of the compliance curve f(V_g) (PAPERS.md §B)
STEP_S = 100e-6          # S of pair difference per weight unit (PAPERS.md §B)
V_IN = 0.2               # V: the largest |input| of a sample after scaling (the READ level)
ADC_HEADROOM = 1.25      # full scale over the largest expected |column current|
EVAL_CHUNK = 250         # samples per forward pass in evaluation (bounds memory)
#: VMM input vectors per sample of each layer (output pixels: 8x8 'same', 6x6 'valid', dense 1)
PATCHES = {"conv1": 64, "conv2": 64, "lstm": 36, "dense": 1}


@dataclass
class NetworkPairs:
    """Every weight of a network as one (weights × copies) grid of (+, −) cells: the layer
    interface `UpdateEngine` drives (xbar, name, shape, n_in, n_out, step_s, pair_grids)."""

    xbar: Crossbar
    pos: Cells
    neg: Cells
    n_weights: int
    step_s: float = STEP_S
    name: str = "network"
    n_copies: int = 2

    @property
    def n_in(self) -> int:
        return self.n_weights

    @property
    def n_out(self) -> int:
        return self.n_copies

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_weights, self.n_copies

    def pair_grids(self) -> tuple[Cells, Cells]:
        return self.pos, self.neg


def open_loop_policy(net, gate_max: Optional[float] = None, **changes) -> OpenLoopGate:
    """The authors' open-loop policy for `net`: gate clip 0.5–2.5 V (CNN), 0.5–2.4 V (ConvLSTM)."""
    if gate_max is None:
        gate_max = 2.4 if isinstance(net, WangConvLSTM) else 2.5
    return OpenLoopGate(gate_max=gate_max, **changes)


class ArrayNetwork:
    """`net` (a WangCNN or WangConvLSTM twin) with its weights on `placement` of `xbar`.

    `engine_state` (from `state()`) restores the host's conductances, gate voltages and
    counters without touching the chip; otherwise every used cell is read once."""

    def __init__(self, xbar: Crossbar, net, placement: Placement, policy: OpenLoopGate,
                 engine_state: Optional[dict] = None) -> None:
        if not isinstance(net, (WangCNN, WangConvLSTM)):
            raise ConfigError(f"net must be a WangCNN or WangConvLSTM, got {type(net).__name__}")
        specs = net.weight_specs()
        missing = [n for n, shape in specs if n not in placement.layers or placement.layers[n].shape != shape]
        if missing:
            raise ConfigError(f"the placement does not hold layer(s) {', '.join(missing)} of "
                              f"{type(net).__name__} with their shapes")
        self.xbar, self.net, self.placement = xbar, net, placement
        self.specs = specs
        sizes = [r * c for _, (r, c) in specs]
        self.bounds = np.concatenate([[0], np.cumsum(sizes)])
        self.start = {name: int(a) for (name, _), a in zip(specs, self.bounds)}
        grid = {s: [placement.layers[n].rows[:, :, s, :].reshape(-1, 2) for n, _ in specs] for s in (PLUS, MINUS)}
        cols = [placement.layers[n].cols[:, :, PLUS, :].reshape(-1, 2) for n, _ in specs]
        pos = Cells(placement.pe, np.concatenate(grid[PLUS]), np.concatenate(cols))
        neg = Cells(placement.pe, np.concatenate(grid[MINUS]), np.concatenate(cols))
        self.pairs = NetworkPairs(xbar, pos, neg, int(self.bounds[-1]))
        self.engine = UpdateEngine(self.pairs, policy, state=engine_state)
        self.saturated = 0
        self.conversions = 0
        self._load_weights()

    # ---- weights ---------------------------------------------------------------------------
    def _load_weights(self) -> None:
        """The twin's weights := the last read-back ones, copies averaged (used by backward)."""
        w = self.engine.weights().mean(axis=1)
        self.net.weights = {name: w[a:b].reshape(shape) for (name, shape), a, b
                            in zip(self.specs, self.bounds[:-1], self.bounds[1:])}

    def weights(self) -> dict:
        """Weights by layer (weight units) from the last read-back, copies averaged."""
        return {k: v.copy() for k, v in self.net.weights.items()}

    def initialize(self) -> None:
        """Weights to about 0: every used cell RESET, then SET at the policy's initial gate."""
        self.engine.initialize_open_loop()
        self._load_weights()

    def update(self, deltas: dict) -> int:
        """Apply weight changes {layer: (n_in, n_out)} to both copies by gate voltage; read
        everything back. Returns the pulses issued."""
        flat = np.concatenate([np.asarray(deltas[name], float).reshape(-1) for name, _ in self.specs])
        before = self.engine.pulses
        self.engine.apply(np.repeat(flat[:, None], 2, axis=1))
        self._load_weights()
        return self.engine.pulses - before

    def state(self) -> dict:
        """What a resumed network needs (the engine's state)."""
        return self.engine.state()

    def gate_voltages(self) -> np.ndarray:
        """Last gate voltages (V) of every cell, (2 signs, n_weights, 2 copies)."""
        return np.stack([self.engine.v_gate_pos, self.engine.v_gate_neg])

    def conductances(self) -> np.ndarray:
        """Last read-back conductances (S) of every cell, (2 signs, n_weights, 2 copies)."""
        return np.stack([self.engine.g_pos, self.engine.g_neg])

    # ---- forward on the array ------------------------------------------------------------
    def matmul(self, name: str, x: np.ndarray, _w=None) -> np.ndarray:
        """x @ W of layer `name` measured on the array (the twins' matmul hook)."""
        lp = self.placement.layers[name]
        n_in, n_out = lp.shape
        per = PATCHES[name]
        if x.ndim != 2 or x.shape[1] != n_in or x.shape[0] % per:
            raise DataError(f"layer {name!r} takes vectors of {n_in} inputs, {per} per sample; got {x.shape}")
        top = np.abs(x.reshape(-1, per * n_in)).max(axis=1)
        scale = np.repeat(np.where(top > 0, V_IN / np.where(top > 0, top, 1.0), 1.0), per)[:, None]
        v = np.clip(x * scale, -V_IN, V_IN)                                # rounding may pass V_IN
        a = self.start[name]
        g = self.conductances()[:, a:a + n_in * n_out].reshape(2, n_in, n_out, 2)
        gdiff = (g[PLUS] - g[MINUS]).sum(axis=2)                          # (n_in, n_out), both copies
        sign = np.array([1.0, -1.0])[None, None, :, None]
        out = np.zeros((x.shape[0], n_out))
        for t in lp.tiles:
            k = slice(t.in_start, t.in_stop)
            rows = lp.rows[k, 0].reshape(-1)                              # (input, sign, copy) order
            volts = (v[:, k, None, None] * sign).repeat(2, axis=3).reshape(len(v), -1)
            expect = np.abs(v[:, k] @ gdiff[k]).max(initial=0.0)
            r = self.xbar.vmm_amplitude(lp.pe, volts, rows, lp.cols[t.in_start, :, PLUS, 0],
                                        adc_full_scale_a=max(ADC_HEADROOM * expect, 1e-9))
            out += r.currents
            self.saturated += int(r.saturated.sum())
            self.conversions += r.saturated.size
        return out / (2 * self.pairs.step_s) / scale

    def forward(self, x):
        """The twin's forward pass with every product on the array."""
        return self.net.forward(x, self.matmul)

    def loss_and_grads(self, x, y):
        """(summed loss, gradients from the last read-back weights, logits) of one batch."""
        return self.net.loss_and_grads(x, y, self.matmul)

    def accuracy(self, x, y):
        """Test accuracy on the array: a float (CNN) or one per time step (ConvLSTM)."""
        x, y = np.asarray(x), np.asarray(y)
        if isinstance(self.net, WangConvLSTM):
            hits = np.zeros(self.net.IN_SHAPE[0])
            for s in range(0, len(x), EVAL_CHUNK):
                logits, _ = self.net.forward(x[s:s + EVAL_CHUNK], self.matmul, True)
                hits += [np.sum(lg.argmax(1) == y[s:s + EVAL_CHUNK]) for lg in logits]
            return [float(h / max(len(y), 1)) for h in hits]
        hits = sum(int(np.sum(self.forward(x[s:s + EVAL_CHUNK])[0].argmax(1) == y[s:s + EVAL_CHUNK]))
                   for s in range(0, len(x), EVAL_CHUNK))
        return hits / max(len(y), 1)


def transfer_open_loop(xbar: Crossbar, net, placement: Placement, g_per_v_s: float = G_PER_V_S,
                       gate_max: Optional[float] = None) -> ArrayNetwork:
    """`net`'s weights (trained ex situ) programmed without verify: every cell RESET and SET at
    the initial gate, then one open-loop update by W with ΔV_g = ±W · STEP_S / (2 g_per_v_s), so
    that on the nominal compliance curve G+ − G− = W · STEP_S. No in-situ training."""
    if not (np.isfinite(g_per_v_s) and g_per_v_s > 0):
        raise ConfigError(f"g_per_v_s must be a positive slope in S/V, got {g_per_v_s!r}")
    weights = {k: np.array(v, dtype=float) for k, v in net.weights.items()}
    an = ArrayNetwork(xbar, net, placement, open_loop_policy(net, gate_max, gain_v=STEP_S / (2 * g_per_v_s)))
    an.initialize()
    an.update(weights)
    return an

"""A network as a list of layers, computed in float (the software twin) or on a crossbar.

Weighted layers (`Conv2d` through im2col, `Dense`) turn their input into a matrix of vectors,
hand it to a matrix-vector product and shape the result back; the product is either exact
float arithmetic on integer weight levels (`Network.forward`, the software twin) or the
`MappedLayer` of the layer's replica on the chip (`MappedNetwork.forward`). Everything else —
scaling, ReLU, pooling, requantization, flattening — is digital and the same function in both,
so the two paths differ only by the chip.

Units: a weighted layer's output is Σ_i x_i W_ij in input units × weight units (weight levels);
`Scale` turns it into real values.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Optional, Sequence, Union

import numpy as np

from hil.crossbar import Crossbar
from hil.errors import ConfigError, DataError
from hil.nn import core as nn
from hil.analog.energy import EnergyModel, VmmLedger
from hil.analog.layer import MappedLayer
from hil.progress import CancelToken
from hil.analog.mapping import SHARED, AllocationPlan, PairEncoding

MatVec = Callable[[str, np.ndarray], np.ndarray]    # (layer name, inputs (batch, n_in)) -> (batch, n_out)


# ---- weighted layers -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Conv2d:
    """Convolution of (N, C, H, W) inputs with `kernels` kernels of `kernel` (kh, kw), no bias.

    `pad`: int or (top, bottom, left, right). Weight matrix: (C·kh·kw, kernels), rows in
    (c, i, j) order, i.e. `w.reshape(kernels, -1).T` of weights (kernels, C, kh, kw)."""

    name: str
    in_shape: tuple          # (C, H, W)
    kernels: int
    kernel: tuple = (3, 3)
    pad: Union[int, tuple] = 0
    stride: int = 1

    def __post_init__(self) -> None:
        nn.conv_padding(self.pad)
        oh, ow = self.out_hw
        if self.kernels < 1 or self.stride < 1 or min(self.kernel) < 1 or oh < 1 or ow < 1:
            raise ConfigError(f"convolution {self.name!r}: {self.kernels} kernels of {self.kernel}, stride "
                              f"{self.stride}, padding {self.pad} on {self.in_shape} gives no output")

    @property
    def out_hw(self) -> tuple[int, int]:
        _, h, w = self.in_shape
        return nn.conv_output_size(h, w, *self.kernel, self.pad, self.stride)

    @property
    def out_shape(self) -> tuple[int, int, int]:
        return (self.kernels, *self.out_hw)

    @property
    def matrix_shape(self) -> tuple[int, int]:
        """(inputs, outputs) of the weight matrix."""
        return self.in_shape[0] * self.kernel[0] * self.kernel[1], self.kernels

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.kernels, self.in_shape[0], *self.kernel)

    def matrix(self, w: np.ndarray) -> np.ndarray:
        """Weights (kernels, C, kh, kw) as the (inputs, outputs) matrix."""
        return np.asarray(w).reshape(self.kernels, -1).T

    def __call__(self, x: np.ndarray, matvec: MatVec) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 4 or x.shape[1:] != tuple(self.in_shape):
            raise DataError(f"convolution {self.name!r} takes (N, {', '.join(map(str, self.in_shape))}) "
                            f"inputs, got {x.shape}")
        y = matvec(self.name, nn.im2col(x, *self.kernel, self.pad, self.stride))
        oh, ow = self.out_hw
        return np.ascontiguousarray(y.reshape(x.shape[0], oh, ow, -1).transpose(0, 3, 1, 2))


@dataclass(frozen=True)
class Dense:
    """Fully connected layer: (N, n_in) -> (N, n_out), no bias. Weight matrix (n_in, n_out)."""

    name: str
    n_in: int
    n_out: int

    @property
    def matrix_shape(self) -> tuple[int, int]:
        return self.n_in, self.n_out

    @property
    def weight_shape(self) -> tuple[int, int]:
        return self.n_out, self.n_in

    def matrix(self, w: np.ndarray) -> np.ndarray:
        """Weights (n_out, n_in) as the (inputs, outputs) matrix."""
        return np.asarray(w).T

    def __call__(self, x: np.ndarray, matvec: MatVec) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.n_in:
            raise DataError(f"dense layer {self.name!r} takes (N, {self.n_in}) inputs, got {x.shape}")
        return matvec(self.name, x)


# ---- digital steps ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scale:
    """Multiply by `factor` (e.g. the real value of one input unit × weight unit)."""

    name: str
    factor: float

    def __call__(self, x, matvec=None):
        return x * self.factor


@dataclass(frozen=True)
class ReLU:
    name: str

    def __call__(self, x, matvec=None):
        return np.maximum(x, 0.0)


@dataclass(frozen=True)
class MaxPool:
    """Non-overlapping k × k max pooling of (N, C, H, W)."""

    name: str
    k: int

    def __call__(self, x, matvec=None):
        return nn.maxpool2d_forward(np.asarray(x), self.k)[0]


@dataclass(frozen=True)
class Quantize:
    """Non-negative values -> unsigned `bits`-bit integer codes of `scale` each (nn.quantize_act)."""

    name: str
    scale: float
    bits: int = nn.ACT_BITS

    def __call__(self, x, matvec=None):
        return nn.quantize_act(x, self.scale, self.bits)


@dataclass(frozen=True)
class Flatten:
    name: str

    def __call__(self, x, matvec=None):
        return np.asarray(x).reshape(len(x), -1)


WEIGHTED = (Conv2d, Dense)


# ---- the network -----------------------------------------------------------------------------------
class Network:
    """Layers run in order; every layer has a unique name. `weights` maps each weighted layer to its
    integer weight levels as an (inputs, outputs) matrix (for the software twin and the transfer)."""

    def __init__(self, layers: Sequence, weights: Optional[Mapping[str, np.ndarray]] = None) -> None:
        names = [layer.name for layer in layers]
        if len(set(names)) != len(names):
            raise ConfigError(f"network layer names must be unique, got {names}")
        self.layers = list(layers)
        self.weights = {}
        for name, w in (weights or {}).items():
            layer = self.layer(name)
            w = np.asarray(w)
            if not isinstance(layer, WEIGHTED) or w.shape != layer.matrix_shape:
                raise DataError(f"weights of {name!r} have shape {w.shape}, the layer's matrix is "
                                f"{getattr(layer, 'matrix_shape', 'none')}")
            self.weights[name] = w

    def layer(self, name: str):
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise ConfigError(f"the network has no layer {name!r}")

    @property
    def weighted(self) -> list:
        return [layer for layer in self.layers if isinstance(layer, WEIGHTED)]

    def matrix_shapes(self) -> dict:
        """(inputs, outputs) of every weighted layer's matrix, for an allocation plan."""
        return {layer.name: layer.matrix_shape for layer in self.weighted}

    def run(self, x: np.ndarray, matvec: MatVec, start: Optional[str] = None, stop: Optional[str] = None):
        """Layers from `start` through `stop` (names, inclusive; default all) on x."""
        names = [layer.name for layer in self.layers]
        i = names.index(self.layer(start).name) if start else 0
        j = names.index(self.layer(stop).name) if stop else len(names) - 1
        for layer in self.layers[i:j + 1]:
            x = layer(x, matvec)
        return x

    def float_matvec(self, name: str, x: np.ndarray) -> np.ndarray:
        """Σ_i x_i W_ij in float64: exact for integer inputs and levels (sums below 2**53)."""
        if name not in self.weights:
            raise DataError(f"the network has no weights for layer {name!r}")
        return np.asarray(x).astype(np.float64, copy=False) @ self.weights[name].astype(np.float64)

    def forward(self, x: np.ndarray, start: Optional[str] = None, stop: Optional[str] = None):
        """The software twin: the same layers with exact float products."""
        return self.run(x, self.float_matvec, start, stop)

    def layer_inputs(self, x: np.ndarray) -> dict:
        """Input vectors (batch, n_in) of every weighted layer on the software twin for inputs x."""
        seen = {}

        def tap(name, v):
            seen[name] = v
            return self.float_matvec(name, v)
        self.run(x, tap)
        return seen


class MappedNetwork:
    """Every replica of every weighted layer of an allocation plan as a `MappedLayer` on `xbar`,
    sharing one energy model and ledger. Convolution layers have one replica per group; the plan's
    FC layers one shared replica."""

    def __init__(self, xbar: Crossbar, plan: AllocationPlan, enc: Optional[PairEncoding] = None,
                 adc_full_scale_a: Optional[Mapping[str, float]] = None,
                 energy: Optional[EnergyModel] = None) -> None:
        if plan.geometry != xbar.geometry:
            raise ConfigError(f"plan is for {plan.geometry.to_dict()}, the station has {xbar.geometry.to_dict()}")
        self.xbar, self.plan = xbar, plan
        self.enc = enc or PairEncoding()
        self.energy = energy or EnergyModel(rows=xbar.geometry.rows, cols=xbar.geometry.cols)
        self.ledger = VmmLedger()
        fs = dict(adc_full_scale_a or {})
        self._layers = {}
        for name in plan.layers:
            for g in plan.groups_of(name):
                self._layers[name, g] = MappedLayer.from_plan(xbar, plan, name, g, self.enc.step_s,
                                                              adc_full_scale_a=fs.get(name), energy=self.energy,
                                                              ledger=self.ledger)

    def layer(self, name: str, group: int = 0) -> MappedLayer:
        """The replica of `name` used by convolver group `group` (FC layers: the shared one)."""
        g = SHARED if name in self.plan.fc_layers else group
        try:
            return self._layers[name, g]
        except KeyError:
            raise ConfigError(f"plan holds no replica of layer {name!r} for group {group}") from None

    def replicas(self, name: str, groups: Optional[Iterable[int]] = None) -> list[MappedLayer]:
        return [self._layers[name, g] for g in self.plan.groups_of(name, groups)]

    def forward(self, net: Network, x: np.ndarray, group: int = 0, start: Optional[str] = None,
                stop: Optional[str] = None, cancel: Optional[CancelToken] = None):
        """`net` from `start` through `stop` with every weighted layer on the chip (replica `group`);
        `cancel` is checked before every VMM."""
        return net.run(x, lambda name, v: self.layer(name, group).forward(v, cancel), start, stop)

    @property
    def adc_full_scale_a(self) -> dict:
        """Per-slot ADC full scale (A) by layer (layers left at the backend default are absent)."""
        return {name: self.layer(name).adc_full_scale_a for name in self.plan.layers
                if self.layer(name).adc_full_scale_a is not None}

    def calibrate_adc(self, net: Network, x: np.ndarray, **kw) -> dict:
        """Per-layer ADC full scale from the ideal currents of the twin's inputs for sample x through
        the target conductances (`MappedLayer.calibrate_adc`, computed on the first replica and used
        by every replica of the layer); returns it by layer."""
        inputs = net.layer_inputs(x)
        out = {}
        for name in self.plan.layers:
            reps = self.replicas(name)
            pos, neg = self.enc.encode(net.weights[name])
            out[name] = reps[0].calibrate_adc(inputs[name], pos, neg, **kw)
            for r in reps[1:]:
                r.adc_full_scale_a = out[name]
        return out

    def saturation(self) -> dict:
        """Fraction of ADC codes at full scale per layer (all replicas) since construction."""
        out = {}
        for name in self.plan.layers:
            s = [r.saturation for r in self.replicas(name)]
            sat, tot = sum(x.saturated for x in s), sum(x.total for x in s)
            out[name] = sat / tot if tot else 0.0
        return out

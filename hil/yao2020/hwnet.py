"""The mCNN on a crossbar: the layers of `MCNN.network()` with the weighted ones on the chip.

A thin composition of the core (`hil.analog`): the allocation plan places the convolution layers
once per convolver group and the FC layer once, shared; `MappedNetwork` runs each weighted layer
on its replica (bit-serial `vmm`, pair subtraction and partial sums digital) and the digital
layers as the software model does, so the two paths differ only by the hardware. Works on any
backend through the Crossbar contract.
"""
from __future__ import annotations

from functools import cached_property
from typing import Optional, Sequence

import numpy as np

from hil.crossbar import Crossbar
from hil.analog.energy import EnergyModel
from hil.analog.layer import MappedLayer
from hil.analog.mapping import AllocationPlan, PairEncoding, plan_network
from hil.analog.network import MappedNetwork, Network
from hil.analog import transfer as analog_transfer
from hil.analog.transfer import TransferReport
from hil.errors import ConfigError
from hil.ops.jobs import ProgramPlan
from hil.programming import WriteVerifyPolicy
from hil.progress import CancelToken, Progress, ProgressCallback, ensure
from hil.runstore import RunWriter
from hil.yao2020.mcnn import CONV, CONV_LAYERS, FC, FC_LAYERS, FEATURES, MCNN, SHAPES, STAGES, check_images

__all__ = ["CONV_LAYERS", "FC_LAYERS", "HardwareMCNN", "TransferReport", "layer_shapes", "plan_mcnn",
           "transfer", "transfer_plan"]


def layer_shapes(model: MCNN) -> dict:
    """Weight-matrix shape (inputs, outputs) of every layer."""
    return {name: (CONV.get(name) or FC).matrix_shape for name in model.params}


def weights_of(model: MCNN) -> dict:
    """Integer weight levels (inputs, outputs) of every layer."""
    return {name: model.weight_matrix(name) for name in SHAPES}


def plan_mcnn(geometry, model: MCNN, groups: int = 1) -> AllocationPlan:
    """Allocation plan of the mCNN with `groups` convolver replicas on `geometry`."""
    return plan_network(geometry, layer_shapes(model), CONV_LAYERS, FC_LAYERS, groups)


def transfer_plan(plan: AllocationPlan, model: MCNN, enc: PairEncoding, layers: Optional[Sequence[str]] = None,
                  groups: Optional[Sequence[int]] = None) -> ProgramPlan:
    """Cells and targets of `layers` (all by default) for every replica group (or `groups`)."""
    return analog_transfer.transfer_plan(plan, enc, weights_of(model), layers, groups)


class HardwareMCNN:
    """The mCNN computed by a crossbar according to an allocation plan."""

    def __init__(self, xbar: Crossbar, model: MCNN, plan: AllocationPlan, enc: Optional[PairEncoding] = None,
                 adc_full_scale_a: Optional[dict] = None, energy: Optional[EnergyModel] = None) -> None:
        shapes = layer_shapes(model)
        for name, shape in plan.layers.items():
            if shapes.get(name) != tuple(shape):
                raise ConfigError(f"allocation plan layer {name!r} is {shape}, the model's is {shapes.get(name)}")
        self.model = model
        self.mapped = MappedNetwork(xbar, plan, enc, adc_full_scale_a, energy)
        self.xbar, self.plan, self.enc = xbar, plan, self.mapped.enc
        self.energy, self.ledger = self.mapped.energy, self.mapped.ledger

    @cached_property
    def net(self) -> Network:
        """The model's layers (built on first use: the model needs its activation scales)."""
        return self.model.network()

    @property
    def adc_fs(self) -> dict:
        """Per-layer ADC full scale (A) in use."""
        return self.mapped.adc_full_scale_a

    def layer(self, name: str, group: int = 0) -> MappedLayer:
        """The chip replica of layer `name` used by convolver group `group` (FC: the shared one)."""
        return self.mapped.layer(name, group)

    def conv(self, name: str, group: int, codes: np.ndarray) -> np.ndarray:
        """8-bit activation codes after convolution stage `name` (hardware), ReLU, pooling and
        requantization: (N, 8, 14, 14) for "c1", (N, FEATURES) for "c3"."""
        return self.mapped.forward(self.net, codes, group, *STAGES[name])

    def features(self, x: np.ndarray, group: int = 0, *, batch: int = 250,
                 progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> np.ndarray:
        """(N, FEATURES) 8-bit codes out of the convolver group `group` for images x (N, 28, 28) uint8."""
        cancel, progress = ensure(cancel, progress)
        x = check_images(x)
        out = []
        for s in range(0, len(x), batch):
            cancel.raise_if_cancelled()
            out.append(self.mapped.forward(self.net, x[s:s + batch, None].astype(np.int64), group,
                                           stop=STAGES["c3"][1], cancel=cancel))
            progress(Progress(min(s + batch, len(x)), len(x), f"convolver G{group + 1}", "img"))
        return np.concatenate(out) if out else np.zeros((0, FEATURES), np.int64)

    def fc_logits(self, codes: np.ndarray) -> np.ndarray:
        """Logits of the FC layer computed on its PEs."""
        return self.mapped.forward(self.net, np.asarray(codes), start=STAGES["fc"][0])

    def predict(self, x: np.ndarray, group: int = 0, **kw) -> np.ndarray:
        return np.argmax(self.fc_logits(self.features(x, group, **kw)), axis=1)

    def dispatch(self, n: int, groups: Optional[Sequence[int]] = None) -> np.ndarray:
        """Group of every input when `n` inputs are shared round-robin across convolver groups."""
        gs = np.asarray(list(range(self.plan.groups)) if groups is None else groups)
        return gs[np.arange(n) % gs.size]

    def parallel_features(self, x: np.ndarray, groups: Optional[Sequence[int]] = None, **kw) -> np.ndarray:
        """Features with the inputs dispatched round-robin across the convolver groups."""
        x = check_images(x)
        which = self.dispatch(len(x), groups)
        out = np.zeros((len(x), FEATURES), np.int64)
        for g in np.unique(which):
            sel = which == g
            out[sel] = self.features(x[sel], int(g), **kw)
        return out

    def calibrate_adc(self, x: np.ndarray, *, percentile: float = 99.9, headroom: float = 1.1) -> dict:
        """Per-layer ADC full scale from the ideal slot currents of sample images x (referenced
        to the layer's largest currents, as in XPEsim); sets and returns it."""
        x = check_images(x)
        return self.mapped.calibrate_adc(self.net, x[:, None].astype(np.int64), percentile=percentile,
                                         headroom=headroom)

    def saturation(self) -> dict:
        """Fraction of ADC codes at full scale per layer since construction."""
        return self.mapped.saturation()

    def read_levels(self, name: str, group: int = 0, n_avg: int = 4) -> np.ndarray:
        """Weight levels (inputs, outputs) of a layer replica, read from the chip."""
        return self.mapped.layer(name, group).read_weights(n_avg)


def transfer(xbar: Crossbar, model: MCNN, plan: AllocationPlan, writer: RunWriter, *,
             enc: Optional[PairEncoding] = None, policy: Optional[WriteVerifyPolicy] = None,
             layers: Optional[Sequence[str]] = None, groups: Optional[Sequence[int]] = None,
             prefix: str = "transfer", resume: bool = False,
             progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> TransferReport:
    """Program every weight of `plan` (or some layers/groups) by write-verify; report errors."""
    mapped = HardwareMCNN(xbar, model, plan, enc).mapped
    return analog_transfer.transfer(mapped, weights_of(model), writer, policy=policy, layers=layers, groups=groups,
                                    prefix=prefix, resume=resume, progress=progress, cancel=cancel)

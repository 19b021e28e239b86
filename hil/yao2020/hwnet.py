"""The mCNN on a crossbar: memristor convolvers, the FC layer, weight transfer.

Convolutions run as im2col patches of 8-bit activation codes sent through the bit-serial `vmm`
of every tile of the layer's replica group; differential column pairs are subtracted and row
tiles summed digitally; ReLU, pooling and the 8-bit requantization between layers are digital
(the same functions as the software model, so the two paths differ only by the hardware).
Works on any backend through the Crossbar contract.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from hil.crossbar import Crossbar
from hil.analog.energy import EnergyModel, VmmLedger
from hil.errors import ConfigError, DataError
from hil.geometry import Cells
from hil.ops.jobs import ProgramPlan, program_job
from hil.analog.mapping import SHARED, AllocationPlan, PairEncoding, plan_network
from hil.yao2020.mcnn import MCNN, conv_patches, maps_from_patch_outputs
from hil.programming import ProgramReport, WriteVerifyPolicy
from hil.progress import CancelToken, Progress, ProgressCallback, ensure
from hil.runstore import RunWriter

log = logging.getLogger(__name__)

CONV_LAYERS = ("c1", "c3")
FC_LAYERS = ("fc",)
CONV_PAD = {"c1": 1, "c3": 0}
VMM_CHUNK = 65536             # input vectors per vmm call (bounds memory)


def layer_shapes(model: MCNN) -> dict:
    """Weight-matrix shape (inputs, outputs) of every layer."""
    out = {}
    for name, w in model.params.items():
        out[name] = (int(np.prod(w.shape[1:])), int(w.shape[0]))
    return out


def weight_matrix(model: MCNN, name: str) -> np.ndarray:
    """Integer weight levels of a layer as an (inputs, outputs) matrix."""
    q = np.asarray(model.weight_levels(name))
    return q.reshape(q.shape[0], -1).T


def plan_mcnn(geometry, model: MCNN, groups: int = 1) -> AllocationPlan:
    """Allocation plan of the mCNN with `groups` convolver replicas on `geometry`."""
    return plan_network(geometry, layer_shapes(model), CONV_LAYERS, FC_LAYERS, groups)


@dataclass
class TransferReport:
    """Outcome of programming every weight of a plan."""

    report: ProgramReport
    weight_error: dict = field(default_factory=dict)     # layer -> RMS error in weight levels
    weight_mae: dict = field(default_factory=dict)       # layer -> mean |error| in weight levels
    out_of_band: dict = field(default_factory=dict)       # layer -> fraction of cells out of band

    def summary(self) -> dict:
        return {"program": self.report.summary(), "weight_rms_error_levels": self.weight_error,
                "weight_mean_abs_error_levels": self.weight_mae,
                "out_of_band_fraction": self.out_of_band}


def transfer_plan(plan: AllocationPlan, model: MCNN, enc: PairEncoding,
                  layers: Optional[Sequence[str]] = None, groups: Optional[Sequence[int]] = None) -> ProgramPlan:
    """Cells and targets of `layers` (all by default) for every replica group (or `groups`)."""
    flat, tgt, li = [], [], []
    gs = range(plan.groups) if groups is None else groups
    for name in layers or list(plan.layers):
        q = weight_matrix(model, name)
        for g in ([SHARED] if name in plan.fc_layers else gs):
            cells, targets = plan.targets(name, max(g, 0), q, enc)
            flat.append(cells.flat(plan.geometry))
            tgt.append(targets)
            li.append(np.rint((targets - enc.g_min_s) / enc.step_s).astype(np.int64))
    return ProgramPlan(np.concatenate(flat), np.concatenate(li), np.concatenate(tgt), enc.tolerance_s)


class HardwareMCNN:
    """The mCNN computed by a crossbar according to an allocation plan."""

    def __init__(self, xbar: Crossbar, model: MCNN, plan: AllocationPlan, enc: Optional[PairEncoding] = None,
                 adc_full_scale_a: Optional[dict] = None, energy: Optional[EnergyModel] = None) -> None:
        shapes = layer_shapes(model)
        for name, shape in plan.layers.items():
            if shapes.get(name) != tuple(shape):
                raise ConfigError(f"allocation plan layer {name!r} is {shape}, the model's is {shapes.get(name)}")
        if plan.geometry != xbar.geometry:
            raise ConfigError(f"plan is for {plan.geometry.to_dict()}, the station has {xbar.geometry.to_dict()}")
        self.xbar = xbar
        self.model = model
        self.plan = plan
        self.enc = enc or PairEncoding()
        self.adc_fs = dict(adc_full_scale_a or {})
        self.energy = energy or EnergyModel(rows=xbar.geometry.rows, cols=xbar.geometry.cols)
        self.ledger = VmmLedger()
        self.saturated = {name: [0, 0] for name in plan.layers}    # layer -> [saturated, total] codes

    # ---- one layer --------------------------------------------------------------------
    def layer_levels(self, name: str, group: int, inputs: np.ndarray) -> np.ndarray:
        """Σ_i x_i q_ij measured by the chip, in input codes × weight levels: (batch, outputs)."""
        n_in, n_out = self.plan.layers[name]
        x = np.asarray(inputs)
        if x.ndim != 2 or x.shape[1] != n_in:
            raise DataError(f"layer {name!r} takes {n_in} inputs per vector, got shape {x.shape}")
        out = np.zeros((x.shape[0], n_out))
        v = self.xbar.v_read_default
        scale = 1.0 / (v * self.enc.step_s)
        for t in self.plan.tiles_for(name, group):
            xt = x[:, t.in0:t.in0 + t.n_in]
            for s in range(0, x.shape[0], VMM_CHUNK):
                chunk = xt[s:s + VMM_CHUNK]
                r = self.xbar.vmm(t.pe, chunk, t.rows, t.cols, adc_full_scale_a=self.adc_fs.get(name))
                c = r.currents
                out[s:s + len(chunk), t.out0:t.out0 + t.n_out] += (c[:, t.pos_cols] - c[:, t.neg_cols]) * scale
                sat = self.saturated[name]
                sat[0] += int(r.saturated.sum())
                sat[1] += r.saturated.size
                self.ledger.add(name, group, t.pe, len(chunk), t.n_in, 2 * t.n_out, self.energy)
        return out

    def conv(self, name: str, group: int, codes: np.ndarray) -> np.ndarray:
        """8-bit activation codes after conv `name` (hardware), ReLU, pooling, requantization."""
        acc = self.layer_levels(name, group, conv_patches(codes, CONV_PAD[name]))
        real = maps_from_patch_outputs(acc, codes.shape[0], name) * self._scale(name)
        return self.model.postprocess_conv(real, name)

    def _scale(self, name: str) -> float:
        """Real value of one (input code × weight level)."""
        return self.model.input_scale(name) * self.model.weight_scale(name)

    # ---- whole network ------------------------------------------------------------------
    def features(self, x: np.ndarray, group: int = 0, *, batch: int = 250,
                 progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> np.ndarray:
        """(N, 192) 8-bit codes out of the convolver group `group` for images x (N, 28, 28) uint8."""
        cancel, progress = ensure(cancel, progress)
        x = _check_images(x)
        out = []
        for s in range(0, len(x), batch):
            cancel.raise_if_cancelled()
            a = self.conv("c1", group, x[s:s + batch, None].astype(np.int64))
            a = self.conv("c3", group, a)
            out.append(a)
            progress(Progress(min(s + batch, len(x)), len(x), f"convolver G{group + 1}", "img"))
        return np.concatenate(out) if out else np.zeros((0, 192), np.int64)

    def fc_logits(self, codes: np.ndarray) -> np.ndarray:
        """Logits of the FC layer computed on its PEs."""
        return self.layer_levels("fc", SHARED, np.asarray(codes)) * self._scale("fc")

    def predict(self, x: np.ndarray, group: int = 0, **kw) -> np.ndarray:
        return np.argmax(self.fc_logits(self.features(x, group, **kw)), axis=1)

    def dispatch(self, n: int, groups: Optional[Sequence[int]] = None) -> np.ndarray:
        """Group of every input when `n` inputs are shared round-robin across convolver groups."""
        gs = np.asarray(list(range(self.plan.groups)) if groups is None else groups)
        return gs[np.arange(n) % gs.size]

    def parallel_features(self, x: np.ndarray, groups: Optional[Sequence[int]] = None, **kw) -> np.ndarray:
        """Features with the inputs dispatched round-robin across the convolver groups."""
        x = _check_images(x)
        which = self.dispatch(len(x), groups)
        out = np.zeros((len(x), 192), np.int64)
        for g in np.unique(which):
            sel = which == g
            out[sel] = self.features(x[sel], int(g), **kw)
        return out

    def calibrate_adc(self, x: np.ndarray, *, percentile: float = 99.9, headroom: float = 1.1) -> dict:
        """Per-layer ADC full scale from the ideal slot currents of sample images x (referenced
        to the layer's largest currents, as in XPEsim); sets and returns `adc_fs`."""
        from hil.ops.vmm import bit_planes
        x = _check_images(x)
        v = self.xbar.v_read_default
        layer_inputs = {"c1": conv_patches(x[:, None].astype(np.int64), CONV_PAD["c1"]),
                        "c3": conv_patches(self.model.features(x, "c1"), CONV_PAD["c3"]),
                        "fc": self.model.features(x, "c3")}
        fs = {}
        for name in (*CONV_LAYERS, *FC_LAYERS):
            pos, neg = self.enc.encode(weight_matrix(self.model, name))
            planes = bit_planes(layer_inputs[name][: 20000])
            top = 0.0
            for t in self.plan.tiles_for(name, 0):
                for g in (pos, neg):
                    gt = g[t.in0:t.in0 + t.n_in, t.out0:t.out0 + t.n_out]
                    cur = planes[:, :, t.in0:t.in0 + t.n_in] @ gt * v
                    top = max(top, float(np.percentile(cur, percentile)))
            fs[name] = max(top * headroom, 1e-9)
        self.adc_fs = fs
        return fs

    def saturation(self) -> dict:
        """Fraction of ADC codes at full scale per layer since construction."""
        return {k: (s / n if n else 0.0) for k, (s, n) in self.saturated.items()}

    # ---- reading the weights back ---------------------------------------------------------
    def read_levels(self, name: str, group: int = 0, n_avg: int = 4) -> np.ndarray:
        """Weight levels (inputs, outputs) of a layer replica, read from the chip."""
        cells, i_in, i_out, sign = self.plan.cells(name, group)
        g = self.xbar.read(cells, n_avg=n_avg)
        out = np.zeros(self.plan.layers[name])
        np.add.at(out, (i_in, i_out), sign * g / self.enc.step_s)
        return out


def _check_images(x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise DataError(f"expected images of shape (N, 28, 28), got {x.shape}")
    if not np.issubdtype(x.dtype, np.integer):
        if not np.all(np.isfinite(x)):
            raise DataError("images contain NaN or infinite values")
        if x.min() < 0 or x.max() > 255:
            raise DataError("images must hold 8-bit pixel values 0..255")
    return x.astype(np.uint8)


def transfer(xbar: Crossbar, model: MCNN, plan: AllocationPlan, writer: RunWriter, *,
             enc: Optional[PairEncoding] = None, policy: Optional[WriteVerifyPolicy] = None,
             layers: Optional[Sequence[str]] = None, groups: Optional[Sequence[int]] = None,
             prefix: str = "transfer", resume: bool = False,
             progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> TransferReport:
    """Program every weight of `plan` (or some layers/groups) by write-verify; report errors."""
    enc = enc or PairEncoding()
    policy = policy or WriteVerifyPolicy()
    pp = transfer_plan(plan, model, enc, layers, groups)
    if not resume:
        writer.set_attrs(prefix, encoding={"g_min_s": enc.g_min_s, "g_max_s": enc.g_max_s,
                                           "cell_levels": enc.cell_levels, "tolerance_s": enc.tolerance_s})
    report = program_job(xbar, writer, pp, policy, resume=resume, progress=progress, cancel=cancel, prefix=prefix)
    hw = HardwareMCNN(xbar, model, plan, enc)
    err, mae, oob = {}, {}, {}
    for name in layers or list(plan.layers):
        gs = [SHARED] if name in plan.fc_layers else (range(plan.groups) if groups is None else groups)
        diffs = [hw.read_levels(name, max(g, 0)) - weight_matrix(model, name) for g in gs]
        err[name] = float(np.sqrt(np.mean(np.square(diffs))))
        mae[name] = float(np.mean(np.abs(diffs)))
    in_band = np.abs(report.final_s - pp.targets_s) <= pp.tolerance_s
    lookup = {int(f): i for i, f in enumerate(pp.flat)}
    for name in layers or list(plan.layers):
        gs = [SHARED] if name in plan.fc_layers else (range(plan.groups) if groups is None else groups)
        idx = [lookup[int(f)] for g in gs for f in plan.cells(name, max(g, 0))[0].flat(plan.geometry)]
        oob[name] = float(1.0 - in_band[idx].mean())
    tr = TransferReport(report, err, mae, oob)
    writer.set_attrs(prefix, result=tr.summary())
    return tr

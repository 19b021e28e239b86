"""A layer's weight matrix on a crossbar: tiles of differential pairs behind one interface.

`MappedLayer` is one replica of one weight matrix W (inputs × outputs), cut into `Tile`s of an
`AllocationPlan`. Its `forward` sends input vectors through the backend's parallel read on
every tile — bit-serial `vmm` (Yao: unsigned 8-bit integer inputs) or `vmm_amplitude` (Wang:
signed row voltages) — subtracts each pair's negative column from its positive column and adds
the partial sums of row tiles digitally, so it returns Σ_i x_i W_ij in input units × weight units
(input units: codes, or volts for the amplitude encoding), where one weight unit is `step_s`
siemens of pair difference. Every layer kind (convolution through
im2col, dense) uses it; a network is a list of them and the digital steps between.

It also reads the realized weights back, computes the ADC full scale from ideal currents,
counts ADC saturation and books every parallel read in the energy/time ledger.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from hil.crossbar import Crossbar
from hil.errors import ConfigError, DataError
from hil.geometry import Cells
from hil.analog.energy import EnergyModel, VmmLedger
from hil.analog.mapping import AllocationPlan, Tile, tile_cells
from hil.ops.vmm import bit_planes
from hil.progress import CancelToken

# Input vectors per vmm call: bounds memory, and keeps every per-call array a few MB so the
# allocator reuses it instead of page-faulting it in afresh. Measured on mCNN inference (CPU
# time): 65536 takes ~10x the page faults and 7-15% more CPU; 4096 pays the ~0.4 ms per-call
# overhead; 32768 is 3% faster than 16384 (fewer calls).
VMM_CHUNK = 32768
ENCODINGS = ("bit_serial", "amplitude")


def _column_selector(idx: np.ndarray):
    """`idx` as a slice when it is an increasing arithmetic progression (a view: no gather),
    else the index array itself; selects the same columns either way."""
    idx = np.asarray(idx)
    if idx.size and idx[0] >= 0:
        step = int(idx[1] - idx[0]) if idx.size > 1 else 1
        if step > 0 and np.array_equal(idx, np.arange(idx[0], idx[-1] + 1, step)):
            return slice(int(idx[0]), int(idx[-1]) + 1, step)
    return idx


@dataclass
class Saturation:
    """ADC codes at full scale out of all codes converted."""

    saturated: int = 0
    total: int = 0

    @property
    def fraction(self) -> float:
        return self.saturated / self.total if self.total else 0.0


@dataclass
class MappedLayer:
    """One replica (`group`) of weight matrix `name` on `xbar`, as differential column pairs.

    `step_s`: conductance difference (S) of one weight unit. `adc_full_scale_a`: ADC full scale
    (A; per slot for bit-serial), None for the backend's default. `encoding`: "bit_serial" or
    "amplitude". Bit-serial reads are booked in `ledger` (the energy model is bit-serial)."""

    xbar: Crossbar
    name: str
    group: int
    tiles: Sequence[Tile]
    step_s: float
    adc_full_scale_a: Optional[float] = None
    energy: Optional[EnergyModel] = None
    ledger: Optional[VmmLedger] = None
    saturation: Saturation = field(default_factory=Saturation)
    encoding: str = "bit_serial"

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ConfigError(f"layer {self.name!r}: encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        if not self.tiles:
            raise ConfigError(f"layer {self.name!r} has no tiles")
        if not (np.isfinite(self.step_s) and self.step_s > 0):
            raise ConfigError(f"layer {self.name!r}: step_s must be a positive conductance, got {self.step_s}")
        self.n_in = max(t.in0 + t.n_in for t in self.tiles)
        self.n_out = max(t.out0 + t.n_out for t in self.tiles)

    @classmethod
    def from_plan(cls, xbar: Crossbar, plan: AllocationPlan, name: str, group: int, step_s: float,
                  **kw) -> "MappedLayer":
        """The replica `group` of layer `name` as placed by `plan` (FC layers: any group)."""
        if plan.geometry != xbar.geometry:
            raise ConfigError(f"plan is for {plan.geometry.to_dict()}, the station has {xbar.geometry.to_dict()}")
        return cls(xbar, name, group, plan.tiles_for(name, group), step_s, **kw)

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_in, self.n_out

    # ---- forward ----------------------------------------------------------------------------
    def forward(self, x: np.ndarray, cancel: Optional[CancelToken] = None) -> np.ndarray:
        """Σ_i x_i W_ij measured on the chip for inputs x (batch, n_in) — unsigned integers
        (bit-serial) or signed volts (amplitude): (batch, n_out) in input units × weight units.
        `cancel` is checked before every VMM (an abort stops within one chunk)."""
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.n_in:
            raise DataError(f"layer {self.name!r} takes {self.n_in} inputs per vector, got shape {x.shape}")
        out = np.zeros((x.shape[0], self.n_out))
        amplitude = self.encoding == "amplitude"
        scale = 1.0 / (self.step_s if amplitude else self.xbar.v_read_default * self.step_s)
        read = self.xbar.vmm_amplitude if amplitude else self.xbar.vmm
        for t in self.tiles:
            xt = x[:, t.in0:t.in0 + t.n_in]
            pos, neg = _column_selector(t.pos_cols), _column_selector(t.neg_cols)
            for s in range(0, x.shape[0], VMM_CHUNK):
                chunk = xt[s:s + VMM_CHUNK]
                if cancel is not None:
                    cancel.raise_if_cancelled()
                r = read(t.pe, chunk, t.rows, t.cols, adc_full_scale_a=self.adc_full_scale_a)
                c = r.currents
                d = np.subtract(c[:, pos], c[:, neg])
                d *= scale
                out[s:s + len(chunk), t.out0:t.out0 + t.n_out] += d
                self.saturation.saturated += int(r.saturated.sum())
                self.saturation.total += r.saturated.size
                if self.ledger is not None and not amplitude:
                    self.ledger.add(self.name, self.group, t.pe, len(chunk), t.n_in, 2 * t.n_out,
                                    self.energy)
        return out

    # ---- cells and weights --------------------------------------------------------------------
    def cells(self):
        """(Cells, input index, output index, sign ±1) of every cell of this replica."""
        return tile_cells(self.tiles)

    def pair_grids(self) -> tuple[Cells, Cells]:
        """Cells of the positive and of the negative member of every weight, each in
        (n_in × n_out) row-major order."""
        cells, i_in, i_out, sign = self.cells()
        grids = []
        for s in (1, -1):
            m = sign == s
            order = np.lexsort((i_out[m], i_in[m]))
            if order.size != self.n_in * self.n_out:
                raise ConfigError(f"layer {self.name!r}: tiles do not cover its {self.shape} weights once")
            grids.append(Cells(cells.pe[m][order], cells.row[m][order], cells.col[m][order]))
        return grids[0], grids[1]

    def read_weights(self, n_avg: int = 4) -> np.ndarray:
        """Realized weights (n_in, n_out) in weight units, read cell by cell: (G+ − G−)/step."""
        cells, i_in, i_out, sign = self.cells()
        g = self.xbar.read(cells, n_avg=n_avg)
        out = np.zeros(self.shape)
        np.add.at(out, (i_in, i_out), sign * g / self.step_s)
        return out

    # ---- ADC calibration ------------------------------------------------------------------------
    def calibrate_adc(self, x_sample: np.ndarray, g_pos: np.ndarray, g_neg: np.ndarray, *,
                      bits: int = 8, percentile: float = 99.9, headroom: float = 1.1,
                      max_vectors: int = 20000) -> float:
        """ADC full scale (A) from the ideal currents of sample inputs through the target
        conductances (per slot for bit-serial; |current| for amplitude), `percentile` of them times
        `headroom` (referenced to the layer's largest currents, as in XPEsim); sets and returns
        `adc_full_scale_a`."""
        x = np.asarray(x_sample)[:max_vectors]
        amplitude = self.encoding == "amplitude"
        planes = x.astype(float) if amplitude else bit_planes(x, bits)
        v = 1.0 if amplitude else self.xbar.v_read_default
        top = 0.0
        for t in self.tiles:
            for g in (g_pos, g_neg):
                gt = np.asarray(g)[t.in0:t.in0 + t.n_in, t.out0:t.out0 + t.n_out]
                cur = planes[..., t.in0:t.in0 + t.n_in] @ gt * v
                top = max(top, float(np.percentile(np.abs(cur), percentile)))
        self.adc_full_scale_a = max(top * headroom, 1e-9)
        return self.adc_full_scale_a

"""Energy and throughput estimates of bit-serial VMM work from per-stage figures.

Every parallel read a network makes is booked in a `VmmLedger` (PE, batch, rows, columns). The
`EnergyModel` turns the ledger into energy at the paper's per-stage figures (Yao 2020; see
PAPERS.md §A, tagged [est]) and into time at the paper's pulse timing: each input vector takes
`bits` slots of `slot_s` on its PE, and different PEs work at the same time.

Assumptions (stated because the paper's Methods are not public): array, driver/multiplexer and
sample-and-hold energies are per PE and per 1-bit stage, scaled by the fraction of rows (array,
drivers) and columns (sample-and-hold) a read uses; one ADC conversion per used column per stage;
one operation = one multiply or one add, i.e. 2 per weight per input vector, with a weight being a
differential pair of cells.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Optional

PAPER_GOPS_PER_W = 11_014.0


@dataclass(frozen=True)
class EnergyModel:
    """Per-stage energies (J) and timing (s) of one PE's bit-serial read."""

    slot_s: float = 50e-9              # 0.2 V, 50 ns read pulse per bit slot (20 MHz)
    bits: int = 8
    array_j: float = 0.91e-12          # array, per PE per 1-bit stage (full rows)
    drivers_j: float = 1.72e-12        # drivers and multiplexers, per PE per stage (full rows)
    sample_hold_j: float = 19.2e-12    # sample-and-hold, per PE per stage (all columns)
    adc_j: float = 2.55e-12            # per 8-bit conversion
    rows: int = 128
    cols: int = 16

    def vector_energy_j(self, n_rows: int, n_cols: int) -> float:
        """Energy of one input vector through n_rows x n_cols of one PE."""
        r, c = n_rows / self.rows, n_cols / self.cols
        per_stage = (self.array_j + self.drivers_j) * r + self.sample_hold_j * c + self.adc_j * n_cols
        return self.bits * per_stage

    def peak_gops_per_w(self) -> float:
        """Every row and column of a PE in use."""
        ops = 2 * self.rows * (self.cols // 2)
        return ops / self.vector_energy_j(self.rows, self.cols) / 1e9


@dataclass
class VmmLedger:
    """Book of parallel reads: per (layer, group, PE) vectors and operations."""

    entries: dict = field(default_factory=lambda: defaultdict(lambda: [0, 0.0, 0.0]))

    def add(self, layer: str, group: int, pe: int, batch: int, n_rows: int, n_cols: int,
            model: Optional[EnergyModel] = None) -> None:
        m = model or EnergyModel()
        e = self.entries[(layer, int(group), int(pe))]
        e[0] += int(batch)
        e[1] += float(batch) * 2 * n_rows * (n_cols // 2)
        e[2] += float(batch) * m.vector_energy_j(n_rows, n_cols)

    def reset(self) -> None:
        self.entries.clear()

    def busy_s(self, model: Optional[EnergyModel] = None, layers=None) -> dict:
        """Per-PE busy time at the model's timing (optionally only some layers)."""
        m = model or EnergyModel()
        out: dict = defaultdict(float)
        for (layer, _, pe), (vectors, _, _) in self.entries.items():
            if layers is None or layer in layers:
                out[pe] += vectors * m.bits * m.slot_s
        return dict(out)

    def summary(self, model: Optional[EnergyModel] = None, layers=None) -> dict:
        """Operations, energy, GOP/s/W and the wall time with PEs in parallel."""
        m = model or EnergyModel()
        sel = {k: v for k, v in self.entries.items() if layers is None or k[0] in layers}
        ops = sum(v[1] for v in sel.values())
        energy = sum(v[2] for v in sel.values())
        busy = self.busy_s(m, layers)
        wall = max(busy.values()) if busy else 0.0
        return {"ops": ops, "energy_j": energy, "vectors": int(sum(v[0] for v in sel.values())),
                "gops_per_w": ops / energy / 1e9 if energy else 0.0,
                "wall_s": wall, "gops": ops / wall / 1e9 if wall else 0.0,
                "peak_gops_per_w": m.peak_gops_per_w(), "paper_gops_per_w": PAPER_GOPS_PER_W,
                "model": asdict(m)}

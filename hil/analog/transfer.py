"""Weight transfer: program every replica of every layer of a mapped network by write-verify.

The cells of all selected replicas form one `ProgramPlan` (layer by layer, replica by replica, in
each replica's cell order), run through `hil.ops.jobs.program_job` (journaled, resumable). The
weights are then read back replica by replica and compared with the levels asked for.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

from hil.ops.jobs import ProgramPlan, program_job
from hil.programming import ProgramReport, WriteVerifyPolicy
from hil.progress import CancelToken, ProgressCallback
from hil.runstore import RunWriter
from hil.analog.mapping import AllocationPlan, PairEncoding
from hil.analog.network import MappedNetwork


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


def transfer_plan(plan: AllocationPlan, enc: PairEncoding, weights: Mapping[str, np.ndarray],
                  layers: Optional[Sequence[str]] = None, groups: Optional[Sequence[int]] = None) -> ProgramPlan:
    """Cells and target conductances of `layers` (default all of the plan) for every replica (or the
    convolution replicas of `groups`); `weights` are integer levels (inputs, outputs) by layer."""
    flat, tgt, li = [], [], []
    for name in layers or list(plan.layers):
        for g in plan.groups_of(name, groups):
            cells, targets = plan.targets(name, g, weights[name], enc)
            flat.append(cells.flat(plan.geometry))
            tgt.append(targets)
            li.append(np.rint((targets - enc.g_min_s) / enc.step_s).astype(np.int64))
    return ProgramPlan(np.concatenate(flat), np.concatenate(li), np.concatenate(tgt), enc.tolerance_s)


def transfer(mapped: MappedNetwork, weights: Mapping[str, np.ndarray], writer: RunWriter, *,
             policy: Optional[WriteVerifyPolicy] = None, layers: Optional[Sequence[str]] = None,
             groups: Optional[Sequence[int]] = None, prefix: str = "transfer", resume: bool = False,
             progress: Optional[ProgressCallback] = None, cancel: Optional[CancelToken] = None) -> TransferReport:
    """Program `weights` (integer levels by layer) onto every selected replica by write-verify; report
    per layer the RMS and mean |error| of the read-back weights (levels) and the out-of-band fraction.
    The encoding and the summary go to the record's `prefix` attributes."""
    enc: PairEncoding = mapped.enc
    names = list(layers or mapped.plan.layers)
    pp = transfer_plan(mapped.plan, enc, weights, names, groups)
    if not resume:
        writer.set_attrs(prefix, encoding={"g_min_s": enc.g_min_s, "g_max_s": enc.g_max_s,
                                           "cell_levels": enc.cell_levels, "tolerance_s": enc.tolerance_s})
    report = program_job(mapped.xbar, writer, pp, policy or WriteVerifyPolicy(), resume=resume, progress=progress,
                         cancel=cancel, prefix=prefix)
    err, mae, oob = {}, {}, {}
    for name in names:
        diffs = [rep.read_weights() - weights[name] for rep in mapped.replicas(name, groups)]
        err[name] = float(np.sqrt(np.mean(np.square(diffs))))
        mae[name] = float(np.mean(np.abs(diffs)))
    in_band = np.abs(report.final_s - pp.targets_s) <= pp.tolerance_s
    lookup = {int(f): i for i, f in enumerate(pp.flat)}
    for name in names:
        idx = [lookup[int(f)] for rep in mapped.replicas(name, groups)
               for f in rep.cells()[0].flat(mapped.plan.geometry)]
        oob[name] = float(1.0 - in_band[idx].mean())
    tr = TransferReport(report, err, mae, oob)
    writer.set_attrs(prefix, result=tr.summary())
    return tr

"""Sweep target `wang2019.insitu`: test accuracy of the CNN trained in situ (after a yield scan)
on a chip of the point's seed and device parameters (Wang 2019 preset and geometry). It calls
the stages of `hil.wang2019.stages`; the defaults are the quick demo's CNN training."""
from __future__ import annotations

from dataclasses import dataclass

from hil.config import Config, param
from hil.geometry import WANG
from hil.sweep.target import Target
from hil.wang2019 import stages
from hil.wang2019.demo import WangDemoConfig


@dataclass
class InsituPointConfig(Config):
    """Yield scan, then in-situ training of `insitu.net` (default: the quick demo's CNN)."""

    yield_scan: stages.YieldScanConfig = param(factory=stages.YieldScanConfig)
    insitu: stages.InsituConfig = param(factory=lambda: WangDemoConfig.quick().cnn)


def run(xbar, writer, cfg: InsituPointConfig, shared=None) -> dict:
    """Final test accuracy (the last time step's for the ConvLSTM), updates, pulses, good lines."""
    ymap = stages.yield_scan(xbar, writer, cfg.yield_scan)
    r = stages.train_insitu(xbar, writer, cfg.insitu)
    acc = r.test_acc[-1] if isinstance(r.test_acc, list) else r.test_acc
    y = ymap.summary()
    return {"test_acc": acc, "updates": r.updates, "pulses": r.pulses,
            **{k: y[k] for k in ("good_rows", "good_cols", "passed_cells")}}


INSITU = Target("wang2019.insitu", InsituPointConfig, stages.KIND, WANG, run, preset="wang2019")

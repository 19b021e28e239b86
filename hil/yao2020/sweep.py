"""Sweep target `yao2020.transfer_hybrid`: accuracy after weight transfer and after hybrid
training of the FC layer on convolver group G1 (the demo's single-convolver step), on a chip of
the point's seed and device parameters. It calls the stages of `hil.yao2020.stages`.

The software-trained model depends only on the training config: `prepare` trains it once per
training config (the sweep caches it in its folder) and each point starts its record from it."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from hil.config import Config, param
from hil.geometry import YAO
from hil.runstore.lifecycle import run_record, station_snapshot
from hil.sweep.target import Target
from hil.yao2020 import stages
from hil.yao2020.demo import DemoConfig
from hil.yao2020.mcnn import MCNN


def _quick(stage: str):
    """The quick demo's config of `stage` (DemoConfig.quick: one source of these settings)."""
    return DemoConfig.quick().stage_configs(stages.DataConfig())[stage]


@dataclass
class TransferHybridConfig(Config):
    """One point: ex-situ training (shared by points with the same `train`), transfer of
    `transfer.groups` convolver groups and the FC, hybrid training on G1. Defaults: the quick
    demo's settings with one convolver group."""

    train: stages.TrainConfig = param(factory=lambda: _quick("train"))
    transfer: stages.TransferConfig = param(factory=lambda: stages.TransferConfig(groups=1, settle_s=600.0))
    hybrid: stages.HybridStageConfig = param(factory=lambda: _quick("hybrid"))


def prepare(cfg: TransferHybridConfig):
    """The software-trained model of `cfg.train`: (arrays, attrs)."""
    with tempfile.TemporaryDirectory(prefix="hil-sweep-train-") as tmp:
        with run_record(Path(tmp) / "train.h5", stages.KIND, station=station_snapshot(None, client="sweep")) as w:
            tr = stages.train(None, w, cfg.train)
    return tr.model.to_arrays(), {"model": tr.model.attrs(), "software_acc": tr.software_acc,
                                  "software_float_acc": tr.software_float_acc}


def run(xbar, writer, cfg: TransferHybridConfig, shared) -> dict:
    """Software, transfer and hybrid accuracies, and the transfer's programming figures."""
    arrays, attrs = shared
    writer.set_attrs("training", stage_config=cfg.train.to_dict(), software_acc=attrs["software_acc"],
                     software_float_acc=attrs["software_float_acc"])
    stages.save_model(writer, MCNN.from_arrays(arrays, attrs["model"]))
    t = stages.transfer(xbar, writer, cfg.transfer)
    h = stages.hybrid(xbar, writer, cfg.hybrid)
    prog = t.report.report.summary()
    return {"software_acc": attrs["software_acc"], "transfer_acc": h.transfer_acc,
            "hybrid_acc": h.history[-1]["acc_test"], "test_images": h.n_test,
            "in_band_fraction": prog["in_band_fraction"], "mean_pulses": prog["mean_pulses"]}


TRANSFER_HYBRID = Target("yao2020.transfer_hybrid", TransferHybridConfig, stages.KIND, YAO, run,
                         prepare=prepare, prepare_key=lambda cfg: cfg.train.to_dict())

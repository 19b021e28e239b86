"""The Yao 2020 reproduction: `run_demo` chains the stages of `hil.yao2020.stages` over one
run record (the same functions `hil train|transfer|hybrid` and the GUI call):

1. ex-situ training of the mCNN (quantization-aware) -> software accuracy;
2. allocation plan (3 convolver groups on 6 PEs, FC on 2) and weight transfer by write-verify;
3. single convolver (G1): accuracy after transfer, hybrid training of the FC layer in situ;
4. parallel convolvers: FC transferred again, per-group accuracy after transfer, hybrid training
   of the shared FC on all groups' outputs, per-group and parallel accuracy after;
5. convolution throughput of 1 vs 3 groups and energy at the paper's per-stage figures;
6. accuracy against time on the virtual clock (10 min .. 30 days) and after 1e6 reads.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional

from hil.config import Config, param
from hil.crossbar import Crossbar
from hil.nn.datasets import Dataset
from hil.progress import Bars, CancelToken, no_bars
from hil.report.accuracy import add_intervals
from hil.runstore import RunWriter
from hil.yao2020 import stages
from hil.yao2020.hwnet import plan_mcnn
from hil.yao2020.hybrid import HybridConfig, holdout_indices
from hil.yao2020.mcnn import MCNN
from hil.yao2020.stages import AFTER_TIMES_S, DAY, STAGE_DONE, load_model, load_plan, save_model  # noqa: F401 (API)

log = logging.getLogger(__name__)

# Yao et al. 2020 figures for the report (PAPERS.md §A).
PAPER = {"software_acc": 0.9799, "transfer_acc": 0.9507, "hybrid_acc": 0.9619, "parallel_acc": 0.9583,
         "train_acc_transfer": 1 - 0.0482, "train_acc_hybrid": 1 - 0.0321,
         "group_train_err_transfer": [0.0482, 0.0643, 0.0585], "group_train_err_hybrid": [0.0289, 0.0422, 0.0340],
         "after_change": {600.0: 0.0037, 7200.0: -0.019}, "gops_per_w": 11014.0}
#: which set each paper figure was measured on ([est]: a secondary summary, PAPERS.md §A)
PAPER_SET = {"software_acc": "test set [est]", "transfer_acc": "test set", "hybrid_acc": "test set",
             "parallel_acc": "test set [est]", "train_acc": "training set", "group_train": "training set",
             "after_change": "test set [est]", "gops_per_w": "[est]"}

#: hybrid subset of `--quick` (the full demo keeps the paper's 6,000, capped by the training digits)
QUICK_HYBRID_IMAGES = 2400


@dataclass
class DemoConfig(Config):
    """Everything `hil demo` varies."""

    seed: int = param(0, lo=0, hi=stages.MAX_SEED)
    groups: int = param(3, lo=1, hi=64)
    train_epochs: int = param(20, lo=1, hi=1000)
    hybrid: HybridConfig = param(factory=HybridConfig)
    settle_s: float = param(600.0, lo=0.0, hi=3650 * DAY)    # virtual time between transfer and the first inference
    test_images: Optional[int] = param(None, lo=1, hi=10_000_000)  # None: the whole test part
    after_images: int = param(1000, lo=1, hi=10_000_000)     # test images scored at each point of the time series
    disturb_reads: int = param(1_000_000, lo=0, hi=10**9)
    after_times_s: tuple[float, ...] = param(AFTER_TIMES_S, lo=0.0, hi=3650 * DAY)

    @classmethod
    def quick(cls, seed: int = 0) -> "DemoConfig":
        """A shorter run for a first look (under 2 minutes on 2 cores)."""
        return cls(seed=seed, train_epochs=6, hybrid=HybridConfig(images=QUICK_HYBRID_IMAGES, epochs=3, lr_levels=0.03,
                                                                  seed=seed),
                   test_images=500, after_images=300, after_times_s=(600.0, 7200.0, DAY, 30 * DAY))

    def stage_configs(self, data: stages.DataConfig) -> dict:
        """The configs of the stages the demo chains."""
        h = stages.HybridStageConfig(hybrid=self.hybrid, data=data, groups=(1,), test_images=self.test_images,
                                     group_evals=False, prefix="hybrid_single")
        return {"train": stages.TrainConfig(data=data, epochs=self.train_epochs, seed=self.seed),
                "transfer": stages.TransferConfig(groups=self.groups, data=data, settle_s=self.settle_s),
                "measure": h.replace(groups=()),
                "hybrid": h,
                "parallel": stages.ParallelConfig(hybrid=h.replace(groups=(), group_evals=True, reset_fc=True,
                                                                   prefix="hybrid_parallel")),
                "aging": stages.AgingConfig(data=data, images=self.after_images, disturb_reads=self.disturb_reads,
                                            times_s=self.after_times_s)}


def run_demo(xbar: Crossbar, ds: Dataset, writer: RunWriter, cfg: DemoConfig, *,
             bars: Bars = no_bars, cancel: Optional[CancelToken] = None,
             say: Callable[[str], None] = log.info) -> dict:
    """All stages on `xbar`; returns the results dict (also stored in the run record). BLAS
    threading is the entry point's (hil.threads)."""
    t0 = time.perf_counter()
    sc = cfg.stage_configs(stages.DataConfig(seed=cfg.seed))
    writer.set_attrs("demo", stage_config=cfg.to_dict())
    res: dict = {"seed": cfg.seed, "dataset": ds.describe(), "config": cfg.to_dict()}
    xt, yt = ds.x_test, ds.y_test
    if cfg.test_images:
        xt, yt = xt[:cfg.test_images], yt[:cfg.test_images]

    plan_mcnn(xbar.geometry, MCNN(seed=cfg.seed), cfg.groups)     # fail before training if it cannot fit
    held = len(holdout_indices(ds.y_train, sc["train"].holdout, sc["train"].seed))
    say(f"training the mCNN ex situ on {len(ds.x_train) - held} digits ({cfg.train_epochs} epochs; "
        f"{held} held out for hybrid training to stop on)")
    tr = stages.train(xbar, writer, sc["train"], bars("train", "batch"), cancel, ds)
    res["software_acc"] = tr.model.accuracy(xt, yt, quantized=True)
    res["software_float_acc"] = tr.model.accuracy(xt, yt, quantized=False)
    res["training_history"] = tr.history

    say("weight transfer by write-verify")
    t = stages.transfer(xbar, writer, sc["transfer"], bars("transfer", "cell"), cancel, ds)
    res["plan"] = t.plan.table()
    res["transfer"] = t.report.summary()
    res["adc_full_scale_a"] = t.adc_full_scale_a

    # Convolver outputs, measured once (the convolution weights do not change in training).
    stages.measure(xbar, writer, sc["measure"], bars("convolver outputs", "img"), cancel, ds)
    say("single convolver G1: hybrid training of the FC layer")
    a = stages.hybrid(xbar, writer, sc["hybrid"], bars("hybrid G1", "batch"), cancel, ds)
    res["transfer_acc"] = a.transfer_acc
    res["hybrid_acc"] = a.history[-1]["acc_test"]
    res["hybrid_single_history"] = a.history
    res["hybrid_single_train_acc"] = [a.history[0]["acc_train"], a.history[-1]["acc_train"]]

    # Parallel convolvers: FC back to its ex-situ weights, then hybrid training on all groups.
    say("parallel convolvers: FC transferred again, hybrid training on all groups' outputs")
    p = stages.parallel_groups(xbar, writer, sc["parallel"], bars("hybrid G1-G3", "batch"), cancel, ds)
    b, groups = p.hybrid.history, range(t.plan.groups)
    res["group_acc_transfer"] = p.hybrid.group_acc_transfer
    res["parallel_transfer_acc"] = p.hybrid.transfer_acc
    res["group_acc_hybrid"] = [b[-1][f"acc_g{g + 1}"] for g in groups]
    res["group_train_acc_transfer"] = [b[0][f"acc_train_g{g + 1}"] for g in groups]
    res["group_train_acc_hybrid"] = [b[-1][f"acc_train_g{g + 1}"] for g in groups]
    res["parallel_acc"] = b[-1]["acc_test"]
    res["hybrid_parallel_history"] = b

    # Throughput (timing model) of 1 vs all groups, energy of parallel inference.
    thr = p.throughput
    n_t = thr["images"]
    res["conv_images_per_s_1group"] = n_t / thr["one_group"]["wall_s"]
    res["conv_images_per_s_parallel"] = n_t / thr["parallel"]["wall_s"]
    res["conv_throughput_ratio"] = thr["one_group"]["wall_s"] / thr["parallel"]["wall_s"]
    res["gops_per_w"] = thr["inference"]["gops_per_w"]
    res["energy"] = thr["inference"]

    # After training: read disturb on G1's convolution weights, then the clock.
    res["after"] = stages.aging(xbar, writer, sc["aging"], bars("accuracy against time", "point"), cancel, ds)
    res["saturation"] = res["after"].pop("saturation")
    res["counts"] = {"test_images": len(xt), "hybrid_subset_images": a.n_train,
                     "hybrid_holdout_images": a.eval_n.get("holdout", 0), "hybrid_single": a.eval_n,
                     "hybrid_parallel": p.hybrid.eval_n, "after_images": res["after"]["images"]}
    _intervals(res, len(xt), a.eval_n, p.hybrid.eval_n, len(groups))
    res["seconds"] = time.perf_counter() - t0
    writer.set_attrs("results", **{k: v for k, v in res.items() if not k.endswith("history")})
    return res


def _intervals(res: dict, n_test: int, single: dict, parallel: dict, groups: int) -> None:
    """Wilson 95 % intervals (`<key>_ci`) beside every accuracy, from the samples behind each."""
    train_n = [parallel.get(f"train_g{g + 1}", parallel.get("train", 0)) for g in range(groups)]
    add_intervals(res, {"software_acc": n_test, "software_float_acc": n_test, "transfer_acc": single["test"],
                        "hybrid_acc": single["test"], "hybrid_single_train_acc": single["train"],
                        "parallel_transfer_acc": parallel["test"], "parallel_acc": parallel["test"],
                        "group_acc_transfer": n_test, "group_acc_hybrid": n_test,
                        "group_train_acc_transfer": train_n, "group_train_acc_hybrid": train_n})
    after = res["after"]
    n = after["images"]
    add_intervals(after, {k: n for k in ("acc_start", "acc") if k in after})
    if "disturb" in after:
        add_intervals(after["disturb"], {k: n for k in ("acc_before", "acc_g1_after", "acc_after")})

"""`hil demo --paper yao2020|wang2019|all`: one JSON object with each paper's keys, one report
folder with a section per paper, and a bad --paper value refused in one line (exit 2).

The Yao run is shrunk by patching `DemoConfig.quick` (the CLI path is the one under test, not
the Yao figures, which tests/test_cnn_hw.py covers)."""
from __future__ import annotations

import json

import pytest

from hil.cli import main
from hil.wang2019.report import wilson
from hil.yao2020.demo import DemoConfig
from hil.yao2020.hybrid import HybridConfig

YAO_KEYS = {"software_acc", "software_float_acc", "transfer_acc", "hybrid_acc", "group_acc_transfer",
            "group_acc_hybrid", "parallel_acc", "conv_throughput_ratio", "gops_per_w", "seconds", "run_record",
            "after", "seed", "report"}
WANG_KEYS = {"wang_cnn_acc", "wang_cnn_software_acc", "wang_cnn_exsitu_acc", "wang_cnn_updates",
             "wang_convlstm_acc_steps", "wang_convlstm_software_acc_steps", "wang_run_record"}
WANG_FIGURES = ("wang_accuracy", "wang_cnn_curves", "wang_distributions", "wang_pulses", "wang_convlstm_steps")


@pytest.fixture
def small_yao(monkeypatch):
    def tiny(cls, seed=0):
        return cls(seed=seed, train_epochs=1, hybrid=HybridConfig(epochs=1, lr_levels=0.05, seed=seed),
                   test_images=100, after_images=40, disturb_reads=1000, after_times_s=(600.0,))
    monkeypatch.setattr(DemoConfig, "quick", classmethod(tiny))


def _run(capsys, args) -> dict:
    assert main(["demo", "--quick", "--seed", "0", "--json"] + args) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1                      # one JSON object
    return json.loads(out[0])


def test_all_papers_give_one_object_and_one_report(tmp_path, capsys, small_yao):
    res = _run(capsys, ["--out", str(tmp_path)])
    assert YAO_KEYS | WANG_KEYS <= set(res)
    assert res["papers"] == ["yao2020", "wang2019"]
    assert res["wang_cnn_updates"] == 40
    assert len(res["wang_convlstm_acc_steps"]) == len(res["wang_convlstm_software_acc_steps"]) == 3
    assert 0.5 < res["wang_cnn_acc"] <= 1 and 0.5 < res["software_acc"] <= 1
    text = (tmp_path / "report.md").read_text()
    assert text.index("Yao 2020") < text.index("## Wang 2019") and "92.13%" in text
    for name in WANG_FIGURES:
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 20_000
        assert (tmp_path / "figures" / f"{name}.svg").read_text().lstrip().startswith("<?xml")
    assert (tmp_path / "figures" / "accuracy.png").exists()          # the Yao figures stay
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["wang_cnn_acc"] == res["wang_cnn_acc"] and stored["hybrid_acc"] == res["hybrid_acc"]


def test_wang_alone_equals_hil_wang_demo(tmp_path, capsys):
    res = _run(capsys, ["--paper", "wang2019", "--out", str(tmp_path / "a")])
    assert WANG_KEYS <= set(res) and not (YAO_KEYS - {"seed", "report"}) & set(res)
    assert main(["wang", "demo", "--quick", "--seed", "0", "--json", "--out", str(tmp_path / "b")]) == 0
    alone = json.loads(capsys.readouterr().out)
    for key in WANG_KEYS - {"wang_run_record"}:
        assert res[key] == alone[key], key
    text = (tmp_path / "a" / "report.md").read_text()
    assert text.startswith("# memristor-hil: Wang 2019") and "Yao 2020" not in text
    lo, hi = wilson(res["wang_cnn_acc"], 300)
    assert f"[{100 * lo:.1f}, {100 * hi:.1f}]" in text          # the interval printed beside the accuracy


@pytest.mark.parametrize("bad, word", [(["--paper", "wang"], "--paper"),
                                       (["--paper", "yao2020", "--wang-station", "nowhere.toml"], "--wang-station")])
def test_bad_paper_options_are_one_line_exit_2(tmp_path, capsys, bad, word):
    assert main(["demo", "--out", str(tmp_path)] + bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and word in err[0]
    assert not list(tmp_path.glob("*.h5*"))


def test_wilson_interval():
    lo, hi = wilson(0.9213, 10_000)
    assert lo < 0.9213 < hi and hi - lo == pytest.approx(2 * 1.96 * (0.9213 * 0.0787 / 10_000) ** 0.5, rel=0.01)
    lo, hi = wilson(1.0, 50)                 # all right: the lower bound is n / (n + z²)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(50 / (50 + 1.959964 ** 2))
    with pytest.raises(ValueError, match="n=0"):
        wilson(0.5, 0)

"""`hil demo --paper yao2020|wang2019|all`: one JSON object with each paper's keys, one report
folder with a section per paper (provenance, intervals that match `hil.stats.wilson` for the
counts behind them, every figure as PNG + SVG and inline in the HTML page), `--seeds` writing a
summary with mean ± sd over seeds, and a bad --paper value refused in one line (exit 2).

The Yao run is shrunk by patching `DemoConfig.quick` (the CLI path is the one under test, not
the Yao figures, which tests/test_cnn_hw.py covers)."""
from __future__ import annotations

import hashlib
import json
import re

import pytest

from hil.cli import main
from hil.stats import accuracy_interval, over_seeds, wilson
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
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["wang_cnn_acc"] == res["wang_cnn_acc"] and stored["hybrid_acc"] == res["hybrid_acc"]
    _check_intervals(stored)
    assert {k: v for k, v in stored.items() if k.endswith("_ci") and k in res} == \
        {k: v for k, v in res.items() if k.endswith("_ci")} and "hybrid_acc_ci" in res     # printed JSON too
    for words in (("date (UTC)", "git commit", "device parameter set", "seed(s) | 0", "## Methods"),
                  ("yao2020_device_params.json", "wang2019_device_params.json", "paper's set", "### Methods")):
        assert all(w in text for w in words), [w for w in words if w not in text]
    for paper in ("yao2020", "wang2019"):
        digest = stored["provenance" if paper == "yao2020" else "wang_provenance"]["device_params"]["sha256"]
        assert hashlib.sha256((tmp_path / f"{paper}_device_params.json").read_bytes()).hexdigest() == digest
    figs = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", text)
    assert len(figs) == 11                        # Yao 6 (accuracy, groups, hybrid, after, cdf, pulses) + Wang 5
    for f in figs:
        assert (tmp_path / f).with_suffix(".svg").read_text().lstrip().startswith("<?xml")
    page = (tmp_path / "report.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == len(figs)


def _check_intervals(res: dict) -> None:
    """Every `<key>_ci` is the Wilson interval of the printed accuracy on its n samples."""
    ci = {k: v for k, v in res.items() if k.endswith("_ci")}
    ci.update({f"after.{k}": v for k, v in res["after"].items() if k.endswith("_ci")})
    assert {"software_acc_ci", "transfer_acc_ci", "hybrid_acc_ci", "parallel_acc_ci", "group_acc_hybrid_ci",
            "group_train_acc_hybrid_ci", "after.acc_ci", "wang_cnn_acc_ci", "wang_convlstm_acc_steps_ci"} <= set(ci)
    assert res["software_acc_ci"]["n"] == res["counts"]["test_images"] == 100
    assert res["wang_cnn_acc_ci"]["n"] == 300 and res["after"]["acc_ci"][0]["n"] == 40
    for key, got in ci.items():
        for d in got if isinstance(got, list) else [got]:
            assert d == wilson(round(d["value"] * d["n"]), d["n"]).as_dict(), key
    assert res["hybrid_acc_ci"]["value"] == res["hybrid_acc"]


def test_seeds_write_a_summary_with_mean_and_sd(tmp_path, capsys, small_yao):
    assert main(["demo", "--quick", "--paper", "yao2020", "--seeds", "0-1", "--hybrid-fraction", "0.025", "--json",
                 "--out", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    per_seed = [json.loads((tmp_path / f"seed-{s}" / "results.json").read_text()) for s in (0, 1)]
    assert [r["seed"] for r in per_seed] == [0, 1] and out["kept"] == []
    summary = json.loads((tmp_path / "summary.json").read_text())["figures"]
    for key in ("software_acc", "hybrid_acc", "parallel_acc"):
        expect = over_seeds([r[key] for r in per_seed])
        assert summary[key]["mean"] == pytest.approx(expect.mean) and summary[key]["sd"] == pytest.approx(expect.sd)
    assert summary["group_acc_hybrid G3"]["n"] == 2 and "after.acc at 10 min" in summary
    text = (tmp_path / "summary.md").read_text()
    m = summary["hybrid_acc"]
    assert f"| G1 after hybrid training, test digits (`hybrid_acc`) | {100 * m['mean']:.2f}% ± {100 * m['sd']:.2f} |" in text
    assert (tmp_path / "seed-1" / "report.html").exists() and (tmp_path / "summary.html").exists()


def test_wang_alone_equals_hil_wang_demo(tmp_path, capsys):
    res = _run(capsys, ["--paper", "wang2019", "--out", str(tmp_path / "a")])
    assert WANG_KEYS <= set(res) and not (YAO_KEYS - {"seed", "report"}) & set(res)
    assert main(["wang", "demo", "--quick", "--seed", "0", "--json", "--out", str(tmp_path / "b")]) == 0
    alone = json.loads(capsys.readouterr().out)
    for key in WANG_KEYS - {"wang_run_record"}:
        assert res[key] == alone[key], key
    text = (tmp_path / "a" / "report.md").read_text()
    assert text.startswith("# memristor-hil: Wang 2019") and "Yao 2020" not in text
    iv = accuracy_interval(res["wang_cnn_acc"], 300)
    assert f"[{100 * iv.lo:.1f}, {100 * iv.hi:.1f}]" in text      # the interval printed beside the accuracy


@pytest.mark.parametrize("bad, word", [(["--paper", "wang"], "--paper"),
                                       (["--paper", "yao2020", "--wang-station", "nowhere.toml"], "--wang-station")])
def test_bad_paper_options_are_one_line_exit_2(tmp_path, capsys, bad, word):
    assert main(["demo", "--out", str(tmp_path)] + bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and word in err[0]
    assert not list(tmp_path.glob("*.h5*"))

"""hil.report: provenance (commit, device parameters and their digest), comparisons called only
when the Wilson intervals separate, the HTML page with every figure inline, the multi-seed
summary (mean ± sd) and `hil demo --seeds` (resume skips a finished seed; bad --seeds exit 2)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from hil.cli import main
from hil.cli import yao as yao_cli
from hil.report.accuracy import WITHIN, add_intervals, compare, interval
from hil.report.html import write_html
from hil.report.provenance import provenance, provenance_lines
from hil.report.seeds import figures, seed_dir, write_summary
from hil.stats import wilson
from sim_backend.params import DeviceParams


def test_intervals_beside_accuracies_match_wilson():
    res = {"acc": 0.962, "groups": [0.95, 0.9]}
    add_intervals(res, {"acc": 500, "groups": [200, 100]})
    assert res["acc"] == 0.962                                  # the scalar stays for old consumers
    assert res["acc_ci"] == wilson(481, 500).as_dict()
    assert [d["n"] for d in res["groups_ci"]] == [200, 100]
    assert res["groups_ci"][1] == wilson(90, 100).as_dict()


def test_difference_called_only_when_intervals_separate():
    close = compare("hybrid", interval(0.964, 1000), "transfer", interval(0.958, 1000))
    assert close.endswith(WITHIN) and "+0.6 points" in close
    far = compare("hybrid", interval(0.97, 1000), "transfer", interval(0.90, 1000))
    assert "higher by 7.0 points" in far and WITHIN not in far


def test_provenance_writes_the_device_parameters_and_their_digest(tmp_path):
    station = {"spec": "sim", "software_version": "0.1.0", "chip": {"id": "abc"},
               "describe": {"model": "SimulatedCrossbar", "params": DeviceParams().to_dict()}}
    p = provenance(station, tmp_path, "yao2020", [3])
    f = tmp_path / p["device_params"]["file"]
    assert p["device_params"]["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    assert DeviceParams.load(f) == DeviceParams()               # loadable with --params
    assert len(p["git_commit"]) >= 40 or p["git_commit"] == "unknown"
    assert p["date"].endswith("+00:00") and p["seeds"] == [3]
    text = "\n".join(provenance_lines(p))
    for word in ("date (UTC)", "git commit", "`sim`", p["device_params"]["sha256"], "seed(s) | 3"):
        assert word in text
    assert provenance({"spec": "lab.toml"}, tmp_path, "x", [0])["device_params"] is None   # physical station


def test_html_inlines_every_figure(tmp_path):
    from hil.report.figures import figure, save
    for name in ("a", "b"):
        fig, (ax,) = figure()
        ax.plot([0, 1], [0, 1])
        save(fig, tmp_path / "figures" / f"{name}.png")
    assert (tmp_path / "figures" / "a.svg").read_text().lstrip().startswith("<?xml")
    md = tmp_path / "report.md"
    md.write_text("# T\n\n| a | b |\n|---|---:|\n| x | 1 |\n\n![A](figures/a.png) ([SVG](figures/a.svg))\n\n"
                  "para `code`\n\n![B](figures/b.png)\n")
    page = write_html(md).read_text()
    assert page.count('src="data:image/png;base64,') == 2 and "figures/a.png" not in page
    assert "<td class=r>1</td>" in page and "<code>code</code>" in page


def _results(seed: int, acc: float) -> dict:
    return {"seed": seed, "papers": ["yao2020"], "report": "r", "run_record": "x", "hybrid_acc": acc,
            "hybrid_acc_ci": interval(acc, 100).as_dict(), "group_acc_hybrid": [acc, acc - 0.01],
            "after": {"images": 40, "time_s": [600.0, 7200.0], "acc": [acc, acc - 0.02]}}


def test_summary_mean_and_sd_over_seeds(tmp_path):
    results = {0: _results(0, 0.95), 1: _results(1, 0.97)}
    f = figures(results[0], ["hybrid_acc", "group_acc_hybrid", "after"])
    assert f == pytest.approx({"hybrid_acc": 0.95, "group_acc_hybrid G1": 0.95, "group_acc_hybrid G2": 0.94,
                               "after.acc at 10 min": 0.95, "after.acc at 2 h": 0.93})
    md = write_summary(tmp_path, results, ["hybrid_acc", "group_acc_hybrid", "after"],
                       {"date": "d", "software_version": "v", "git_commit": "c"})
    s = json.loads((tmp_path / "summary.json").read_text())["figures"]
    assert s["hybrid_acc"]["mean"] == pytest.approx(0.96)
    assert s["hybrid_acc"]["sd"] == pytest.approx(np.std([0.95, 0.97], ddof=1))
    assert "| hybrid_acc | 96.00% ± 1.41 | 95.00% | 97.00% |" in md.read_text()
    assert (tmp_path / "summary.html").exists()


def test_seeds_resume_skips_a_finished_seed(tmp_path, monkeypatch, capsys):
    ran = []

    def fake(args, seed, out, papers):
        ran.append(seed)
        out.mkdir(parents=True, exist_ok=True)
        res = {**_results(seed, 0.9 + seed / 100), **{k: 0.5 for k in yao_cli.YAO_KEYS if k != "after"}}
        (out / "results.json").write_text(json.dumps(res))
        return res, ""
    monkeypatch.setattr(yao_cli, "_demo_one", fake)
    args = ["demo", "--paper", "yao2020", "--json", "--out", str(tmp_path), "--seeds"]
    assert main(args + ["0,2"]) == 0
    before = (seed_dir(tmp_path, 0) / "results.json").read_bytes()
    seed_dir(tmp_path, 2).joinpath("results.json").write_text('{"seed": 2, "hybr')     # cut off mid-write
    capsys.readouterr()
    assert main(args + ["0-2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert ran == [0, 2, 1, 2] and out["kept"] == [0]
    assert (seed_dir(tmp_path, 0) / "results.json").read_bytes() == before
    assert out["figures"]["hybrid_acc"]["n"] == 3


@pytest.mark.parametrize("bad, word", [(["--seeds", "3-1"], "--seeds"), (["--seeds", "a"], "--seeds"),
                                       (["--seeds", "1,1"], "--seeds"),
                                       (["--seeds", "0-1", "--seed", "2"], "--seed")])
def test_bad_seeds_one_line_exit_2(tmp_path, capsys, bad, word):
    assert main(["demo", "--paper", "yao2020", "--out", str(tmp_path / "o")] + bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and word in err[0]
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").iterdir())

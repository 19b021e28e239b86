"""The summary of a multi-seed run (`hil demo --seeds 0-4`): every figure of the per-seed
results as mean ± sample standard deviation over seeds (`hil.stats.over_seeds`), as JSON and
as a markdown/HTML page."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

from hil.report.files import read_json, write_json
from hil.report.html import write_html
from hil.report.methods import duration
from hil.stats import over_seeds


def seed_dir(out: Path, seed: int) -> Path:
    """Where one seed of a multi-seed run writes its report."""
    return Path(out) / f"seed-{seed}"


def finished(out: Path, seed: int, keys: Iterable[str]):
    """The seed's results when its results.json is there, whole, and holds every key; else None."""
    res = read_json(seed_dir(out, seed) / "results.json")
    if not isinstance(res, dict) or any(k not in res for k in keys):
        return None
    return res


def _label(name: str, k: int, res: dict) -> str:
    if name.endswith("acc") and name.startswith("after") and k < len(res.get("time_s", [])):
        return f"{name} at {duration(res['time_s'][k])}"
    if "group" in name:
        return f"{name} G{k + 1}"
    if name.endswith("_steps"):
        return f"{name} frame {k + 1}"
    return f"{name}[{k}]"


def figures(res: dict, keys: Iterable[str], parent: str = "") -> dict[str, float]:
    """The numeric figures under `keys` of a results dict, flattened to 'name' / 'name G2' /
    'after.acc at 2 h' -> value (intervals, counts and time stamps are left out)."""
    out: dict[str, float] = {}
    for key in keys:
        v = res.get(key)
        name = f"{parent}.{key}" if parent else key
        if key.endswith("_ci") or key in ("images", "time_s", "seed") or isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            out[name] = float(v)
        elif isinstance(v, (list, tuple)):
            out.update({_label(name, k, res): float(x) for k, x in enumerate(v) if isinstance(x, (int, float))})
        elif isinstance(v, dict):
            out.update(figures(v, list(v), name))
    return out


def summarize(per_seed: Mapping[int, dict]) -> dict:
    """name -> {"mean", "sd", "n", "values"} over the seeds that have the figure, from each
    seed's `figures`."""
    names = list(dict.fromkeys(n for f in per_seed.values() for n in f))
    return {n: over_seeds([f[n] for f in per_seed.values() if n in f]).as_dict() for n in names}


def _value(name: str, x: float) -> str:
    return f"{100 * x:.2f}%" if "acc" in name else f"{x:,.4g}"


def _spread(name: str, m: dict) -> str:
    if "acc" in name:
        return f"{100 * m['mean']:.2f}% ± {100 * m['sd']:.2f}"
    sd = 0.0 if m["sd"] <= 1e-9 * abs(m["mean"]) else m["sd"]      # float noise of equal values
    return f"{m['mean']:,.4g} ± {sd:,.2g}"


def _title(name: str, names: Mapping[str, str]) -> str:
    head, _, rest = name.partition(" ")
    return f"{names.get(head, head)} {rest}".strip() + f" (`{head}`)" * (head in names)


def write_summary(out: Path, results: Mapping[int, dict], keys: Iterable[str], provenance: dict,
                  names: Mapping[str, str] = {}) -> Path:
    """summary.json, summary.md and summary.html in `out` (`names`: readable titles of the
    figures' keys for the page); returns the markdown path."""
    out = Path(out)
    seeds = sorted(results)
    keys = list(keys)
    per_seed = {s: figures(results[s], keys) for s in seeds}
    summary = summarize(per_seed)
    write_json(out / "summary.json", {"seeds": seeds, "runs": {str(s): str(seed_dir(out, s)) for s in seeds},
                                      "provenance": provenance, "figures": summary})
    lines = ["# memristor-hil: summary over seeds", "",
             f"Seeds {', '.join(map(str, seeds))}; each seed's full report is in `seed-N/report.html`. "
             "Every figure as mean ± sample standard deviation over the seeds; accuracies in percent "
             "(the ± is in points).", "",
             f"Date (UTC) {provenance['date']}, memristor-hil {provenance['software_version']}, git commit "
             f"`{provenance['git_commit']}`.", "",
             "| figure | mean ± sd | " + " | ".join(f"seed {s}" for s in seeds) + " |",
             "|---|---:|" + "---:|" * len(seeds)]
    for name, m in summary.items():
        lines.append(f"| {_title(name, names)} | {_spread(name, m)} | "
                     + " | ".join(_value(name, per_seed[s][name]) if name in per_seed[s] else "—" for s in seeds)
                     + " |")
    md = out / "summary.md"
    md.write_text("\n".join(lines) + "\n")
    write_html(md)
    return md

"""Run every benchmark in benchmarks/ and collect every figure into one JSON file.

Each `bench_*.py` runs in its own subprocess. A script that has a `--json` flag is asked for
it and its JSON is kept; any other script's output is kept as text lines. `--quick` passes a
script's `--quick` flag when it has one, else the small sizes listed in QUICK (only the options
the script declares). Prints one table: script, status, seconds and every numeric figure.

    python benchmarks/run_all.py [--quick] [--out benchmarks/results.json] [--only vmm,program]
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: small/fast options of the scripts that have no --quick (script -> option -> value)
QUICK = {
    "bench_gui.py": {"--frames": "20", "--runs": "1", "--repeats": "2", "--busy": "0"},
    "bench_wang.py": {"--batches": "5"},
    "bench_station.py": {"--cells": "256", "--host-cells": "16", "--target": "256"},
    "bench_board.py": {"--cells": "256"},
    "bench_smu.py": {"--cells": "16"},
}


def declares(source: str, option: str) -> bool:
    return re.search(r"""add_argument\(\s*["']""" + re.escape(option) + r"""["']""", source) is not None


def arguments(script: Path, quick: bool) -> list[str]:
    """The options run_all passes to `script`: --json if it has it, and its quick options."""
    src = script.read_text()
    args = ["--json"] if declares(src, "--json") else []
    if quick:
        if declares(src, "--quick"):
            args.append("--quick")
        else:
            for opt, val in QUICK.get(script.name, {}).items():
                if declares(src, opt):
                    args += [opt, val]
    return args


def last_json(text: str):
    """The last JSON object or array in `text` that starts a line (None if there is none)."""
    dec = json.JSONDecoder()
    found = None
    for m in re.finditer(r"^[\[{]", text, re.M):
        try:
            found, _ = dec.raw_decode(text, m.start())
        except ValueError:
            continue
    return found


def figures(data, prefix: str = "") -> dict[str, float]:
    """Every numeric leaf of `data` by its dotted path."""
    out: dict[str, float] = {}
    if isinstance(data, dict):
        for k, v in data.items():
            out.update(figures(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            out.update(figures(v, f"{prefix}[{i}]"))
    elif isinstance(data, (int, float)) and not isinstance(data, bool):
        out[prefix] = data
    return out


def run_one(script: Path, quick: bool, timeout_s: float) -> dict:
    argv = [sys.executable, str(script), *arguments(script, quick)]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, cwd=HERE.parent)
    except subprocess.TimeoutExpired:
        return {"argv": argv[1:], "status": f"timed out after {timeout_s:.0f} s", "seconds": timeout_s}
    res = {"argv": argv[1:], "seconds": time.perf_counter() - t0,
           "status": "ok" if p.returncode == 0 else f"exit {p.returncode}"}
    data = last_json(p.stdout) if "--json" in argv else None
    if data is not None:
        res["figures"] = data
    else:
        res["output"] = p.stdout.splitlines()
    if p.returncode != 0:
        res["stderr"] = p.stderr.strip().splitlines()[-5:]
    return res


def table(results: dict) -> str:
    lines = [f"{'benchmark':20s} {'status':10s} {'s':>8s}  figure"]
    for name, r in results.items():
        figs = figures(r.get("figures", {}))
        head = f"{name:20s} {r['status'][:10]:10s} {r['seconds']:8.1f}"
        if not figs:
            text = [ln.strip() for ln in r.get("output", []) if ln.strip()] or ["(no figures)"]
            lines += [f"{head if i == 0 else ' ' * len(head)}  {t}" for i, t in enumerate(text)]
            continue
        for i, (k, v) in enumerate(figs.items()):
            lines.append(f"{head if i == 0 else ' ' * len(head)}  {k} = {v:.6g}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="each script's small/fast mode")
    ap.add_argument("--out", type=Path, default=HERE / "results.json", help="JSON file (default benchmarks/results.json)")
    ap.add_argument("--only", help="comma-separated benchmark names (e.g. vmm,program); default all")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per script (default 3600)")
    a = ap.parse_args(argv)
    if a.timeout <= 0:
        ap.error(f"--timeout must be positive, got {a.timeout}")
    scripts = sorted(HERE.glob("bench_*.py"))
    if a.only:
        wanted = {w.strip().removeprefix("bench_").removesuffix(".py") for w in a.only.split(",") if w.strip()}
        unknown = wanted - {s.stem.removeprefix("bench_") for s in scripts}
        if unknown:
            ap.error(f"--only: no benchmark named {', '.join(sorted(unknown))}")
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in wanted]
    results = {}
    for s in scripts:
        print(f"running {s.name} ...", file=sys.stderr, flush=True)
        results[s.stem] = run_one(s, a.quick, a.timeout)
    out = {"created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "quick": a.quick,
           "python": sys.version.split()[0], "benchmarks": results}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(out, indent=2))
    print(table(results))
    print(f"figures written to {a.out}")
    return out


if __name__ == "__main__":
    main()

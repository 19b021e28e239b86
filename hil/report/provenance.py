"""Where a report's numbers came from: date, software version and git commit, station, device
parameter set (written beside the report, with its SHA-256 digest), seeds."""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import subprocess
from pathlib import Path
from typing import Optional, Sequence

from hil import __version__

#: the header `sim_backend.params.DeviceParams.save` writes, so the file loads with `--params`
PARAMS_FORMAT = {"format": "memristor-hil-device-params", "schema_version": 1}
_REPO = Path(__file__).resolve().parents[2]


def git_commit(repo: Path = _REPO) -> str:
    """The checkout's commit (with "-dirty" when files differ from it), or "unknown"."""
    try:
        r = subprocess.run(["git", "-C", str(repo), "describe", "--always", "--dirty", "--abbrev=40"],
                           capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return r.stdout.strip() if r.returncode == 0 and r.stdout.strip() else "unknown"


def write_device_params(station: dict, path: Path) -> Optional[dict]:
    """Write the simulated chip's device parameters (from the record's station snapshot) to
    `path` as JSON; returns {"file", "sha256"} of the bytes written, None for a physical station."""
    params = (station.get("describe") or {}).get("params")
    if not params:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps({**PARAMS_FORMAT, **params}, indent=2, sort_keys=True).encode()
    path.write_bytes(data)
    return {"file": path.name, "sha256": hashlib.sha256(data).hexdigest()}


def software() -> dict:
    """Date (UTC), software version and git commit of a report made now."""
    return {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "software_version": __version__, "git_commit": git_commit()}


def provenance(station: dict, out: Path, name: str, seeds: Sequence[int]) -> dict:
    """Provenance of one paper's run on `station` (a run record's station snapshot); the device
    parameters go to `out/<name>_device_params.json`."""
    d = station.get("describe") or {}
    chip = station.get("chip") or {}
    return {**software(), "software_version": station.get("software_version") or __version__,
            "station": station.get("spec") or "unknown",
            "backend": d.get("model") or d.get("backend") or "unknown",
            "chip": chip.get("id") or "unknown",
            "device_params": write_device_params(station, Path(out) / f"{name}_device_params.json"),
            "seeds": [int(s) for s in seeds]}


def provenance_lines(p: dict) -> list[str]:
    """The provenance as a markdown table."""
    dp = p["device_params"]
    params = (f"[{dp['file']}]({dp['file']}), SHA-256 `{dp['sha256']}`" if dp
              else "measured device (physical station): no model parameters")
    rows = [("date (UTC)", p["date"]), ("software", f"memristor-hil {p['software_version']}"),
            ("git commit", f"`{p['git_commit']}`"), ("station", f"`{p['station']}` ({p['backend']}, chip {p['chip']})"),
            ("device parameter set", params), ("seed(s)", ", ".join(map(str, p["seeds"])))]
    return ["| provenance | |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]

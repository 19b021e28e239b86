"""`hil station check FILE` and `hil sim-station serve`.

The check itself is `hil.ops.station_check`; `serve_station` puts the emulated instruments of a
station file's [emulation] table on TCP through the registry's "sim-station-server" entry
(`sim_backend.serve`), so other processes and tools can reach the same emulated station.
"""
from __future__ import annotations

import json
import signal
import sys
import threading
from typing import Optional

from hil import options as opt
from hil.cli.common import bundled_station, jsonable
from hil.errors import HilError
from hil.ops.station_check import station_check
from hil.registry import resolve

DEFAULT_SIM_STATION = bundled_station("sim-instruments.toml")


def format_check(res: dict) -> str:
    """Human-readable summary of a station_check result."""
    d = res.get("describe", {})
    lines = [f"station {res['station']}: {d.get('station', d.get('backend', '?'))} "
             f"({d.get('backend', '?')} backend)"]
    geo = d.get("geometry", {})
    if geo:
        lines.append(f"  geometry: {geo.get('n_pe')} PE x {geo.get('rows')} rows x {geo.get('cols')} cols")
    for name, inst in (d.get("instruments") or {}).items():
        if inst.get("kind") == "array-board":
            info = (inst.get("board") or {}).get("info") or {}
            lines.append(f"  {name}: array board {info.get('model')} firmware {info.get('firmware')} serial "
                         f"{info.get('serial')} protocol {info.get('protocol')} on {inst.get('port')}")
        else:
            ident = inst.get("identity") or {}
            lines.append(f"  {name}: {inst.get('kind')} {ident.get('manufacturer', '')} {ident.get('model', '')} "
                         f"serial {ident.get('serial', '')} firmware {ident.get('firmware', '')} at "
                         f"{inst.get('resource')}")
    if d.get("channels"):
        lines.append("  channels: " + ", ".join(f"{k} -> {v}" for k, v in d["channels"].items()))
    if d.get("program_path"):
        lines.append(f"  program: {d['program_path']}, read: {d.get('read_path')}, pulse: {d.get('pulse_path')}")
    for op, lim in (d.get("limits") or {}).items():
        lines.append(f"  limits {op:5s}: |V| <= {lim['max_v']:g} V, gate <= {lim['max_v_gate']:g} V, "
                     f"compliance <= {lim['max_compliance_a']:g} A, width {lim['min_width_s']:g}..{lim['max_width_s']:g} s")
    dr = res.get("dry_run", {})
    if dr:
        s = dr.get("summary", {})
        pulses = ", ".join(f"{op} {t['pulses']} (max {t['max_v']:.3g} V, gate {t['max_v_gate']:.3g} V)"
                           for op, t in dr.get("pulses", {}).items())
        lines.append(f"  dry run: {dr['cells']} cells of PE {dr['pe']}: every pulse within the limits; "
                     f"{s.get('in_band_fraction', 0):.0%} in band on the shadow chip; pulses {pulses}")
    lines.append("  OK" if res.get("ok") else "  FAILED")
    return "\n".join(lines)


def serve_station(station_file=None, *, host: str = "127.0.0.1", port_base: int = 5025, faults=()):
    """The emulated instruments of `station_file` (default stations/sim-instruments.toml) on TCP,
    with `faults` ("[SOURCE:]KIND@N") armed; see `sim_backend.serve.serve_station`."""
    return resolve("sim-station-server")(station_file or DEFAULT_SIM_STATION, host=host, port_base=port_base,
                                         faults=faults)


def cmd_station_check(args) -> int:
    try:
        res = station_check(args.file, cells=args.cells, pe=args.pe)
    except HilError as e:
        if args.json:
            print(json.dumps({"station": args.file, "ok": False, "error": str(e), "error_type": type(e).__name__}))
            return 2
        raise
    if args.json:
        print(json.dumps(res, default=jsonable))
    else:
        print(format_check(res))
    return 0


def cmd_sim_station_serve(args, *, wait: Optional[threading.Event] = None) -> int:
    server = serve_station(args.station, host=args.host, port_base=args.port_base, faults=args.fault or ())
    stop = wait or threading.Event()
    old_term = None
    if wait is None and threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, lambda *_: stop.set())       # stop cleanly on SIGTERM too
    try:
        print(f"emulated station {args.station or DEFAULT_SIM_STATION} (world {server.world.name!r}) serving:")
        for name, addr in server.addresses.items():
            print(f"  {name}: {addr}")
        print("connect with pyvisa.ResourceManager('@py').open_resource(...) (SMUs) or "
              "serial.serial_for_url('socket://...') / port = \"socket://...\" in a station file (board); "
              "Ctrl+C stops", flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        print("stopped", file=sys.stderr)
    return 0


def add_parsers(sub) -> None:
    """Add `hil station check` and `hil sim-station serve`."""
    sp = sub.add_parser("station", help="station files: check connections, identities and limits")
    ssub = sp.add_subparsers(dest="station_cmd", required=True)
    c = ssub.add_parser("check", help="connect, print identities, firmware and limits, dry-run a small job")
    c.add_argument("file", type=opt.station_spec, help="station TOML file (or 'sim')")
    c.add_argument("--cells", type=opt.positive_int(opt.MAX_CHECK_CELLS), default=16,
                   help="cells in the dry-run job, at most one PE's (default 16)")
    c.add_argument("--pe", type=opt.integer(0, opt.MAX_PE - 1), default=0, help="PE of the dry-run job (default 0)")
    c.add_argument("--json", action="store_true", help="print one JSON object")
    c.set_defaults(func=cmd_station_check)

    sp = sub.add_parser("sim-station", help="emulated instrument station tools")
    ssub = sp.add_subparsers(dest="sim_station_cmd", required=True)
    s = ssub.add_parser("serve", help="serve the emulated instruments of a station file on TCP (no "
                                      "authentication: for local tools only)",
                        description="Serve the emulated instruments of a station file on TCP. The servers have "
                                    "NO AUTHENTICATION: anyone who can reach the port drives the emulated "
                                    "instruments. They bind to 127.0.0.1 by default and are for local tools only.")
    s.add_argument("--station", default=None,
                   help=f"station TOML with an [emulation] table (default {DEFAULT_SIM_STATION.name})")
    s.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1, loopback; there is no authentication)")
    s.add_argument("--port-base", type=opt.port, default=5025,
                   help="first TCP port; instruments get consecutive ports (0: free ports)")
    s.add_argument("--fault", action="append", default=None, metavar="[SOURCE:]KIND@N",
                   help="arm a fault: KIND (timeout, garble, drop, reset, disconnect) on the transaction after "
                        "the next N of instrument SOURCE (every instrument without SOURCE); repeatable, "
                        "like [emulation] faults = [\"board:timeout@5\"]")
    s.set_defaults(func=cmd_sim_station_serve)

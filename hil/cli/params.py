"""`hil params fit`: fit the simulated device model to a programming record (the digital twin)."""
from __future__ import annotations

import math
from pathlib import Path

from hil import options as opt
from hil.cli.common import emit
from hil.errors import ConfigError
from hil.registry import resolve

MAX_BOOTSTRAP = 1000


def _base(text):
    """The base parameter set: a preset name or a parameter file."""
    device_params = resolve("sim-params")
    if text is None:
        return device_params()
    if Path(text).is_file():
        return device_params.load(text)
    try:
        return device_params.preset(text)
    except ConfigError as e:
        raise ConfigError(f"--base {text!r} is neither a parameter file nor a preset ({e})") from None


def _num(v) -> str:
    return "—" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4g}"


def cmd_params_fit(args) -> int:
    base = _base(args.base)
    result = resolve("sim.fit_params")(args.record, base, bootstrap=args.bootstrap, seed=args.seed)
    result.params.save(args.out)
    data = {"out": args.out, **result.to_dict()}
    lines = [f"fitted {len(result.estimates)} parameters of {args.record} -> {args.out} "
             f"(95% intervals: {args.bootstrap} bootstrap resamplings of the cells)",
             f"  {'parameter':34s} {'base':>9s} {'estimate':>9s} {'95% interval':>21s} {'fit χ²/dof':>10s} {'n':>7s}"]
    for e in result.estimates:
        lines.append(f"  {e.name:34s} {_num(e.base):>9s} {_num(e.estimate):>9s} "
                     f"{'[' + _num(e.lo95) + ', ' + _num(e.hi95) + ']':>21s} {_num(e.gof):>10s} {e.n:>7d}")
    lines.append("not constrained by this record (kept from the base): " + "; ".join(result.not_constrained))
    emit(args, data, "\n".join(lines))
    return 0


def add_parsers(sub) -> None:
    """Add `hil params fit`."""
    sp = sub.add_parser("params", help="device-model parameter sets (digital twin)")
    psub = sp.add_subparsers(dest="params_cmd", required=True)
    f = psub.add_parser("fit", help="fit the simulator's device parameters to a programming record")
    f.add_argument("record", type=opt.run_record("make one with `hil program --out {path}`"),
                   help="programming run record (.h5) made by `hil program`")
    f.add_argument("--out", required=True, type=opt.out_file, help="parameter file to write (.toml or .json)")
    f.add_argument("--base", help="preset name or parameter file the fit starts from and keeps for what the "
                                  "record does not constrain (default: the yao2020 preset)")
    f.add_argument("--bootstrap", type=opt.integer(0, MAX_BOOTSTRAP), default=20,
                   help=f"bootstrap resamplings for the 95%% intervals, 0..{MAX_BOOTSTRAP} (default 20)")
    f.add_argument("--seed", type=opt.seed, default=0, help="seed of the bootstrap and the "
                                                                              "simulated replay (default 0)")
    f.add_argument("--json", action="store_true", help="print one JSON object")
    f.set_defaults(func=cmd_params_fit)

"""`hil sweep run SPEC` and `hil sweep plot DIR`: parameter and Monte Carlo sweeps on
dask.distributed (hil.sweep)."""
from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from pathlib import Path

from hil import options as opt
from hil.cli.common import cancel_on_sigint, emit, show_progress
from hil.errors import Cancelled

#: a dask scheduler address: tcp://HOST:PORT (or tls://, ws://, wss://)
ADDRESS = re.compile(r"^(tcp|tls|ws|wss)://[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")


def scheduler_address(text: str) -> str:
    if not ADDRESS.match(text):
        raise argparse.ArgumentTypeError(f"must look like tcp://HOST:PORT, got {text!r}")
    return text


def default_out(spec_path: str) -> Path:
    return Path("runs") / "sweeps" / Path(spec_path).stem


def cmd_run(args) -> int:
    from hil.sweep import load_spec, run_sweep
    spec = load_spec(args.spec)
    if not args.verbose:
        logging.getLogger("distributed").setLevel(logging.WARNING)    # the scheduler's chatter
    out = Path(args.out) if args.out else default_out(args.spec)
    n_points = len(spec.points())
    bar = None
    if not args.json and sys.stderr.isatty():
        from tqdm import tqdm
        bar = tqdm(desc=f"sweep {spec.target}", unit="point", file=sys.stderr, dynamic_ncols=True)

    def on_point(p, row) -> None:
        if bar is not None:
            show_progress(bar, p)
        elif not args.json:
            msg = f" ({row['error']})" if row["status"] != "ok" else ""
            print(f"point {p.done}/{p.total} {row['point_id']} {row['status']} in {row['wall_s']:.1f} s on "
                  f"worker {row['worker']}{msg}", file=sys.stderr, flush=True)
    try:
        with cancel_on_sigint() as cancel:
            o = run_sweep(spec, out, scheduler=args.scheduler, workers=args.workers, keep_records=args.keep_records,
                          on_point=on_point, cancel=cancel)
    except Cancelled as e:
        raise Cancelled(f"{e}; run the same command again to resume") from None
    finally:
        if bar is not None:
            bar.close()
    lost = f", {len(o.lost)} lost (run again to retry them)" if o.lost else ""
    emit(args, o.to_dict(),
         f"sweep {spec.target}: {n_points} points, {o.skipped} already done, {o.ok} ok, {o.failed} failed{lost}"
         + (f" on {o.workers} workers in {o.seconds:.1f} s" if o.workers else "")
         + f"\ntable: {out / 'results.parquet'}")
    return 1 if o.lost else 0


def cmd_plot(args) -> int:
    from hil.sweep.plot import plot_sweep
    files = plot_sweep(args.dir, figure=args.figure, out=args.plots)
    emit(args, {"plots": [str(f) for f in files]}, "\n".join(str(f) for f in files))
    return 0


def add_parsers(sub) -> None:
    """Add `hil sweep run|plot`."""
    sp = sub.add_parser("sweep", help="parameter and Monte Carlo sweeps on dask.distributed")
    ssub = sp.add_subparsers(dest="sweep_cmd", required=True)
    r = ssub.add_parser("run", help="run a sweep spec (TOML) point by point on a dask cluster; resumable")
    r.add_argument("spec", type=opt.existing_file("sweep spec"), help="sweep spec TOML (see sweeps/)")
    r.add_argument("--scheduler", type=scheduler_address, help="dask scheduler tcp://HOST:PORT (default: a local "
                                                                "cluster on this machine's cores)")
    r.add_argument("--workers", type=opt.positive_int(max(64, 4 * (os.cpu_count() or 1)), "worker processes"),
                   help="local cluster worker processes (default: this machine's cores)")
    r.add_argument("--out", type=opt.out_dir, help="sweep folder (default runs/sweeps/<spec name>)")
    r.add_argument("--keep-records", action="store_true",
                   help="keep every point's run record in OUT/records (workers must be able to write there)")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.set_defaults(func=cmd_run)
    p = ssub.add_parser("plot", help="figures against each axis with 95%% bands over seeds; heat maps for two axes")
    p.add_argument("dir", type=opt.existing_dir, help="sweep folder")
    p.add_argument("--figure", help="only this figure (a column of the table)")
    p.add_argument("--plots", type=opt.out_dir, help="where to write (default DIR/plots)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_plot)

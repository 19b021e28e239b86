"""`python -m gui [--station sim|FILE] [--run RUN.h5] [--screenshot DIR]` (same as `hil gui`)."""
import argparse
import sys

from .app import main

p = argparse.ArgumentParser(prog="python -m gui", description="memristor-hil probe-station GUI")
p.add_argument("--station", help="'sim' or a station TOML file to connect at start")
p.add_argument("--seed", type=int, help="seed of the simulated chip")
p.add_argument("--geometry", choices=("yao", "wang", "small"), help="simulated chip geometry (with --station sim)")
p.add_argument("--run", help="run record (.h5) to open")
p.add_argument("--screenshot", metavar="DIR", help="run a short scripted session, write every panel as PNG, exit")
sys.exit(main(p.parse_args()))

"""The hil command line."""
from hil.cli.common import main

__all__ = ["main"]

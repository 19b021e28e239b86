"""memristor-hil core: backend-agnostic crossbar control, programming, VMM, networks and runs."""
__version__ = "0.1.0"

"""pyvisa backend entry point: `pyvisa.ResourceManager("STATION.toml@hilsim")` reaches the
emulated instruments of `sim_backend` (pyvisa looks for a module named pyvisa_<backend>)."""
from sim_backend.visa_backend import HilsimVisaLibrary as WRAPPER_CLASS  # noqa: F401

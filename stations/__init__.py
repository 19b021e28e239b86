"""Station files shipped with memristor-hil (simulated and emulated stations, and an example of a
real one). A package only so that an installed copy carries them; `hil.cli.common.bundled_station`
finds them."""

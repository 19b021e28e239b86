"""TSP (Lua) scripts loaded onto Keithley 2600B instruments (read with importlib.resources)."""

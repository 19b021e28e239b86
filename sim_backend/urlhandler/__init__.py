"""pyserial URL handlers of the emulated instruments.

Importing this package registers it in `serial.protocol_handler_packages`, so that
`serial.serial_for_url("hilsim://WORLD/board")` opens an in-process port to the emulated array
board of world WORLD (see `protocol_hilsim`). `sim_backend` imports it on import.
"""
import serial

if __name__ not in serial.protocol_handler_packages:
    serial.protocol_handler_packages.append(__name__)

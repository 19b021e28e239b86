"""pyserial handler for `hilsim://WORLD/NAME`: an in-process serial port to the emulated array
board NAME (default "board") of the EmulatedWorld WORLD (`sim_backend.world.get_world`).

Bytes written go straight to the board firmware; its replies wait in an input buffer. There is
no real waiting: a read that cannot be satisfied charges the port timeout to the world's virtual
clock, tells the board the line was idle, and returns what is there (pyserial timeout semantics).
When the world's fault injector has disconnected the board, every operation raises
SerialException (until `world.faults.reconnect(NAME)`).
"""
from __future__ import annotations

import urllib.parse

from serial.serialutil import PortNotOpenError, SerialBase, SerialException

from sim_backend.board_firmware import board_for
from sim_backend.world import get_world


class Serial(SerialBase):
    """Serial port object connected to an emulated array board."""

    def open(self) -> None:
        if self.is_open:
            raise SerialException("Port is already open.")
        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        self.world_name, self.board_name = self.from_url(self.port)
        self.world = get_world(self.world_name)
        self.board = board_for(self.world, self.board_name)
        self._check_link()
        self._rx = bytearray()
        self.is_open = True

    def from_url(self, url: str) -> tuple[str, str]:
        """(world name, board name) of 'hilsim://WORLD[/NAME]'."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "hilsim" or not parts.netloc:
            raise SerialException(f"expected a URL of the form 'hilsim://WORLD/board', got {url!r}")
        name = parts.path.strip("/") or "board"
        if "/" in name:
            raise SerialException(f"hilsim URL {url!r}: the instrument name must be one path element")
        return parts.netloc, name

    def _check_link(self) -> None:
        if self.board_name in self.world.faults.disconnected:
            raise SerialException(f"hilsim://{self.world_name}/{self.board_name}: device disconnected")

    def _reconfigure_port(self, *args, **kwargs) -> None:
        """Line settings have no meaning in process."""

    def close(self) -> None:
        if self.is_open:
            self.world.checkpoint()
        self.is_open = False

    @property
    def in_waiting(self) -> int:
        if not self.is_open:
            raise PortNotOpenError()
        self._check_link()
        return len(self._rx)

    def write(self, data) -> int:
        if not self.is_open:
            raise PortNotOpenError()
        self._check_link()
        data = bytes(data)
        self._rx += self.board.receive(data)
        return len(data)

    def read(self, size: int = 1) -> bytes:
        if not self.is_open:
            raise PortNotOpenError()
        self._check_link()
        if len(self._rx) < size:
            if self._timeout:
                self.world.spend(self._timeout)       # the host waited for its timeout (virtual time)
            self.board.idle()
            self._check_link()
        out = bytes(self._rx[:size])
        del self._rx[:size]
        return out

    def reset_input_buffer(self) -> None:
        if not self.is_open:
            raise PortNotOpenError()
        self._rx.clear()

    def reset_output_buffer(self) -> None:
        if not self.is_open:
            raise PortNotOpenError()

    def flush(self) -> None:
        """Writes are delivered immediately."""

    @property
    def out_waiting(self) -> int:
        return 0

    def _update_dtr_state(self) -> None:
        pass

    def _update_rts_state(self) -> None:
        pass

    def _update_break_state(self) -> None:
        pass

    @property
    def cts(self) -> bool:
        return True

    @property
    def dsr(self) -> bool:
        return True

    @property
    def ri(self) -> bool:
        return False

    @property
    def cd(self) -> bool:
        return True

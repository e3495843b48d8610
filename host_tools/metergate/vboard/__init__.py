"""The virtual board: the gateway firmware under the MicroPython unix port (docs/virtual-board.md)."""

# Metergate gateway application (MicroPython; also imports under CPython for tests).
VERSION = "0.5.0"

# Metergate gateway application (MicroPython; also imports under CPython for tests).

"""Hardware-in-the-loop suite support: the pytest plugin (``plugin``) and `metergate hil` (``cli``).

See docs/hil.md.
"""

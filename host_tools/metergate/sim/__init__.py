"""Meter-bus simulator library (`metergate sim`).

- ``site``: the site file (TOML) -> validated ``Site``; ``SiteState`` for run-time
  switches (breakers, faults); ``SiteError`` for every validation problem.
- ``electrical``: phasor model -> ``Measurement`` per meter, status ``Flags``,
  ``EnergyRegisters``.

``DEMO_SITE`` is the path of the embedded default site used by ``make demo``.
"""

import pathlib

from metergate.sim.site import Site, SiteError, SiteState, load_site, load_site_text

DEMO_SITE = pathlib.Path(__file__).resolve().parent / "sites" / "demo.toml"

__all__ = ["DEMO_SITE", "Site", "SiteError", "SiteState", "load_site", "load_site_text"]

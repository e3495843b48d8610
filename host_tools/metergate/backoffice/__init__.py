"""The back office (后台采集管控): what the gateways publish, kept safely, and
the collection success figures the crews are paid by.

- ``store`` / ``migrations``: SQLite or PostgreSQL, one schema applied by the tool;
- ``ingest``: MQTT -> database, acknowledged only after commit (docs/backoffice.md);
- ``rule``: when a meter's day counts as collected;
- ``success``: per meter / collector / work order (``meter_days`` for scoring);
- ``imports``: CSV results of other systems, work orders, the collector registry;
- ``status``: gateways, today's success, quarantine;
- ``traffic`` / ``pgserver``: gateway-like traffic and a throwaway PostgreSQL
  for the tests and the bench.
"""

"""What a technician runs on site against one gateway.

- ``selfcheck``: run the gateway's installation self-check over MQTT or over
  its serial console (REPL), follow its progress, read its report, and lay
  the report out as rows in the technician's language; the guided breaker
  (correspondence) test. ``metergate selfcheck`` (``cli.py``) is thin over it.
"""

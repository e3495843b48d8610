"""Provisioning and commissioning gateways (docs/installer-guide.md).

Split by responsibility:

- ``flash``: esptool (chip, MAC, MicroPython image): exact argv, thin, tested without a chip;
- ``repl``: the board's REPL through the real mpremote (probe, hashes, copy, verify) and its console;
- ``app``: the gateway app compiled with the mpy-cross matching the board's ``_mpy``;
- ``device``: board configs (board_configs/) and the device's config.json, checked on the host;
- ``identity``: device id from the MAC (the virtual board's MAC from its flash path), the JSONL log;
- ``credentials``: per-device broker credentials, mosquitto password file and ACL;
- ``runner``: the steps for one board and a batch, with progress;
- ``commission``: the self-check report against the work order, the commissioning record;
- ``cli``: ``metergate provision``, ``broker-acl``, ``commission``.
"""

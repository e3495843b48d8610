# Pure codecs: DL/T 645-2007, DL/T 645-1997, Modbus RTU. No I/O here, ever.

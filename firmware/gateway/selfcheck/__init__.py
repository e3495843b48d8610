# The installation self-check (issue 5): the catalogue of findings
# (findings.py) and the checks that produce them (electrical.py: what a
# meter's readings say about its wiring). Imported only while a self-check
# runs, so nothing here costs heap during normal polling.

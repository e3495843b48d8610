"""Crew maintenance scoring and spot-check sampling (issue 7, docs/scoring.md).

rules       the rules file (TOML, versioned, validated) -> Rules
inputs      the data directory's CSV files and the back office's records -> Dataset
collection  which meters were read in each job's window
scores      the pay rules as pure functions of counts and dates (exact arithmetic)
month       a month scored per person, day, order, complaint, person and crew
sampling    seeded, auditable spot-check draws; inspectors' results recorded back
reports     terminal table, CSV, JSON, standalone HTML, --explain
cli         `metergate score`, `metergate sample draw|record`
"""

"""`kit data`: fetch the case's data and weights, verify a copy record by record, fix what can be fixed.

Nothing here names a case's files: each command asks `case.data` (kit/case/data.py) where they lie and how a record
is checked. sources.py reads a case's data-sources.toml (its sources and the counts of a complete copy); http.py is
the one HTTP downloader (Range, retries, resume); fetch.py, audit.py and fix.py are the three commands' logic;
manifest.py is the data manifest that `kit data verify` writes and `kit run`, `kit check-host` and `kit submit`
read; identity.py is what a run read, by content (inputs.json).
"""

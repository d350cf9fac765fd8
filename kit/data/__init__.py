"""`kit data`: fetch the case's data and weights, verify a copy record by record, fix what can be fixed.

sources.py reads the case's data-sources.toml; http.py is the one HTTP downloader (Range, retries, resume);
fetch.py, verify.py and fix.py are the three commands' logic; manifest.py is the data manifest that
`kit data verify` writes and `kit run`, `kit check-host` and `kit submit` read.
"""

"""A second case, for the tests only: a linear regression trained on two CPU ranks and quizzed on held-out points.

It exists to prove the case seam: it writes the same run-directory contract as the LLaVA case and goes through
`kit run`, `report`, `submit`, `verify` and `compare` with no change to kit/ (tests/e2e/test_toy_case.py). Its
plugin (plugin.py) registers by entry point the way any third-party case would.
"""

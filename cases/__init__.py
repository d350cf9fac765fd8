"""Benchmark cases: what runs inside the container (never imports typer, rich or docker)."""

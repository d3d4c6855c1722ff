"""Hydra configs of the entry points (a package so installed console scripts can find them)."""

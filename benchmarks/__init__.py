"""Reproducible performance and reliability measurements (`lvlm-var bench` arrives with issue #8)."""

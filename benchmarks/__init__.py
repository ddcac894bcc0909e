"""Reproducible performance and reliability measurements (`lvlm-var bench`, `lvlm-var eval real`)."""

"""`biamat-engine analyze`: a run directory's records as tables (read.py), figures (figures.py,
matplotlib, imported where used) and a markdown report (report.py).

The records are JSON and TOML files; only Fig. 4 (confidence.py: the final model scoring the
auxiliary images) needs torch and the data, and it imports them inside its functions."""

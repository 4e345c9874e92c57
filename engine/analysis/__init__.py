"""`biamat-engine analyze`: a run directory's records as tables (read.py), figures (figures.py,
matplotlib, imported where used) and a markdown report (report.py).

Nothing here imports torch: the analysis reads only the JSON and TOML files of a run."""

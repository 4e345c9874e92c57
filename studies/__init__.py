"""Studies: a paper table as one command (`biamat-engine study NAME`).

    grids.py         the registry: each study's rows (runs) and how its table labels them
    paper_data.py    the paper-scale .beton files and the `prepare` command that writes each
    paper_numbers.toml  the paper's published numbers (Tables 1-7, 13), as printed
    data_steps.py    the data files a study makes itself (pseudo-label, robustify, prepare)
    plan.py          grid x scale x seeds -> runs, each with its config, commands and folder
    runner.py        execute each run: skip the finished, resume the interrupted, evaluate
    table.py         study.md and study.csv: this engine's numbers beside the paper's
"""

"""What exists to reproduce the paper rather than to train a model (the engine never imports it).
A study is a paper table as one command (`biamat-engine study NAME`):

    grids.py         the registry: each study's rows (runs) and how its table labels them
    paper_data.py    the paper-scale .beton files, each as the data step (command) that writes it
    paper_numbers.toml  the paper's published numbers (Tables 1-7, 13), as printed
    data_steps.py    DataStep: a command that writes one data file (prepare, pseudo-label, robustify)
    plan.py          grid x scale x seeds -> runs, each with its config, commands and folder
    runner.py        execute each run: skip the finished, resume the interrupted, evaluate
    scheduler.py     the runs as submitit jobs (`--jobs N` here, or Slurm), each after the runs it needs
    job.py           one run on every rank of torchrun (`--gpus-per-run`)
    estimate.py      the dry run's device hours, from the step throughput docs/benchmarks.md measured
    table.py         study.md and study.csv: this engine's numbers beside the paper's
    demo.py          `biamat-engine demo`: plain AT and AT+BiaMAT side by side on built-in shapes
    analysis/        `biamat-engine analyze`: a run's records as tables, figures and a report
    theory/          `biamat-engine theory gaussian`: the Section 2.2 model, simulated
"""

"""The paper's theory, simulated: the binary Gaussian model of its Section 2.2 and Appendix A
(`gaussian.py` the model and its closed forms, `gaussian_statements.py` the paper's statements
checked against a simulation, `gaussian_training.py` adversarial training of the linear
classifier under each auxiliary target, `gaussian_report.py` the files `theory gaussian` writes).
numpy only: no torch, seconds on a CPU."""

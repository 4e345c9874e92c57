"""Fast kernels for the BiaMAT step, each with a plain-torch reference of the same signature.

`kernels` never imports `engine` or `cli`.
"""

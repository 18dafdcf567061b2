"""Reproductions of the experiments of Schnell & Thuerey, "A Gradient Flow Modification to
Improve Learning from Differentiable Quantum Simulators" (ICML 2023 workshop).

Run them with ``quflow reproduce`` (or ``python -m quflow reproduce``).
"""

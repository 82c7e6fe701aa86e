"""Analyses of trained runs: the course's plots, sweeps and their reports, the supplementary demos.

They import matplotlib and scikit-learn freely: nothing here is on the serving path.
"""

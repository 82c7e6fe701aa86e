"""Benchmarks of trained-model quality (`vae bench`)."""

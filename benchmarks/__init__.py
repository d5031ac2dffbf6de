"""Benchmarks of the Vapor provider against the emulator: ``python -m benchmarks``."""

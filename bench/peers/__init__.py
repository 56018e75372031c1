"""Builders of the peer libraries' models for the benchmarks in bench/ (measured, never imported by dgm_fast)."""

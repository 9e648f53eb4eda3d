"""Losses: small standalone functions composed by tasks (no state, no base class)."""

"""Heads: small standalone modules that tasks put on top of an encoder's features."""

"""Compression spaces and policies: what can be chosen per layer, and how a choice is applied."""

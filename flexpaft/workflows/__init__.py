"""Flows made of API calls: the demo and whole studies."""

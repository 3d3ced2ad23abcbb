"""Simulation envs and player personas."""

"""Operator commands: put, status, replay."""

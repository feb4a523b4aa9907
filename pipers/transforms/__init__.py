"""Daemons that take messages from one queue and pass them to the next."""

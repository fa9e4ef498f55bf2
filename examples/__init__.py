"""Runnable examples of the service."""

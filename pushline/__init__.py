"""Pushline: receive iAdvize push events and turn them into tables analysts can query."""

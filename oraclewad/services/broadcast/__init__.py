"""Broadcast service: paced marketing campaigns to imported contacts (`python -m` runs it)."""

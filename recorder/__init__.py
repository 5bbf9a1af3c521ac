"""Dual recording (双录): segment writing, integrity, encryption, export (issue #3)."""

"""Data only: the embedded default model, icons and screenshots (installed as package data)."""

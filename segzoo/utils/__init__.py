"""Utilities: metrics, visualisation, downloads and device helpers."""

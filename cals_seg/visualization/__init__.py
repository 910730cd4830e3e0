"""Reliability diagrams, risk-coverage curves and worst-image panels (PNG bytes)."""

"""Verification: is a semantic neighbour's answer right for this query? Verifiers and calibration."""

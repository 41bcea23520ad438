"""Parley's client package: generated stubs for every contract (`parley.<service>.v1`)."""

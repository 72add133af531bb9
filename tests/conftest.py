"""Shared test configuration: every test talks to the local Earth Engine emulator (see edown.emulator)."""

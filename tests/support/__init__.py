"""Shared test helpers (real components, no mocks)."""

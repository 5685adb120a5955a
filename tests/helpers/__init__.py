"""Shared test helpers: key material made at test time, the emulator, a fake clock."""

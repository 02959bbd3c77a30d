"""Signing in: passwords and tokens from the keyring or elsewhere, OAuth2, preflight checks."""

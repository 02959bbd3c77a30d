"""Bytes on disk: file permissions, and the content-addressed attachment store."""

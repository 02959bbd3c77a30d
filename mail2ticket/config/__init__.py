"""The config file: its model, its checks, loading it, and the account files we write."""

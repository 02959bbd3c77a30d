"""Mail we send: composing, the outbox queue and its sender, acknowledgements."""

"""Raw bytes to a readable message: headers, charsets, bodies, attachments, large messages."""

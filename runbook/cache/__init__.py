"""The Attic cache: client argv and verifier, token secret and signing keys."""

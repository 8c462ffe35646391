"""The core values: errors, masking, secrets, params, models."""

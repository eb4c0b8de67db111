"""IMAGIOMargin algorithms: margin metrics, registration, uncertainty, logic, CLI and demo step (no Qt)."""

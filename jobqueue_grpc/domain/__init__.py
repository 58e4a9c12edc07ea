"""Pure queue logic: states, transitions, validation, retry policy. No I/O here."""

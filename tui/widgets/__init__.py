"""The app's widgets, one per file: log table, caption diff, image preview, status, drift."""

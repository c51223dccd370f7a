"""Command-line front door of nbhr."""

"""Low-level helpers every layer may use: errors, value checks, atomic files and locks. Imports nothing of wgpt."""

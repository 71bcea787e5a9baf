"""The Lightning module (loss, logging, optimizer and schedule) and its metrics."""

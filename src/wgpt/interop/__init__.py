"""Models in and out: wgpt's checkpoint files, model sources of every kind, Hugging Face directories."""

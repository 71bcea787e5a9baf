"""Tools on top of the runner: eval, generate, tokens, shapes, plot."""

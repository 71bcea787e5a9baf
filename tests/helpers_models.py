"""What tests/unit/test_models.py and tests/e2e/test_models_cli.py share: knobs as command-line overrides."""


def override(key: str, value) -> str:
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else value
    return f"model.{key}={text}"

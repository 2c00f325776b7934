"""The saved model: its format, the one inference path, and its MLflow pyfunc flavour."""

"""An example of bringing your own model to Pillars: see ``churn_example.tasks``."""

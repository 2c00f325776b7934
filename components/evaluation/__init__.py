"""Steps 3 and 4: evaluation on the test split, and the gate that approves or rejects a candidate."""

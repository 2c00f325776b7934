"""Step 1, data: preparing a task's splits and the data profile drift is measured against."""

"""Click commands of the dualenc CLI, one module per area; cli.py adds them to the group."""

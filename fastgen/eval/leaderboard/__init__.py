"""Leaderboard rows after they are scored: the CSV read strictly and written atomically (io.py), the summary
tables (table.py), plots, and the W&B dashboards."""

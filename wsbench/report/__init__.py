"""Reports from run directories: the run summary, leaderboard statistics and pages, comparison
of runs, export of masks into the source CT."""

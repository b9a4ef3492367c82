"""The harness: the plugin registry, the runner of one method on one split, the run directory,
the bench of many methods, post-processing and evaluation shared by every method."""

"""Speed and memory benchmarks of the uad_notebooks methods (issue 8). Run: `python -m benchmarks.run --help`."""

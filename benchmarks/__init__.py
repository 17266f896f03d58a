"""One script per measured claim; run as `python -m benchmarks.bench_NAME [--quick]`."""

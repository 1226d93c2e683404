"""`graphdrivers bench`: the benchmark runner and its report (the suites are in bench/)."""

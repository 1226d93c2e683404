"""The conformance suite: what every graph driver must do, through the public interface only.

Run against a driver with ``pytest --pyargs graphdrivers.testing.conformance
--graphdriver NAME`` (see graphdrivers.testing).
"""

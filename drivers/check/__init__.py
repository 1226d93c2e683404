"""`graphdrivers check [--repair]`: layer records against what is on disk and in the kernel.

``inspect(driver)`` lists findings (findings.py), ``repair(driver)`` fixes what can be
fixed: data that no layer record explains is deleted, damaged layers are moved into
the home's quarantine (quarantine.py), never deleted. The framework's inspections are
in generic.py; each backend adds its own through ``Driver.check_findings()``.
"""
from graphdrivers.check.findings import Finding
from graphdrivers.check.run import inspect, outstanding, repair

__all__ = ["Finding", "inspect", "outstanding", "repair"]

"""The conformance suite's fixtures: every test runs once per selected driver."""
from graphdrivers.testing.fixtures import (_reclaim_tmp_path, driver, driver_name,  # noqa: F401
                                           home_and_options)


def pytest_configure(config) -> None:
    # also registered by the project's setup.cfg; a third party's run has only this
    config.addinivalue_line("markers", "slow: long cases (select with -m slow, skip with -m 'not slow')")

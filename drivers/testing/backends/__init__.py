"""Home makers for the built-in drivers that need a prepared backend (btrfs, devicemapper),
registered in setup.cfg under the graphdrivers.testing.homes entry points."""

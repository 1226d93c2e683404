"""devicemapper: layers as thin devices in a device-mapper thin pool (Docker's devicemapper driver)."""

"""The btrfs storage driver (graphdrivers.btrfs): a subvolume per layer, snapshots for
children, qgroup quotas, and changes found from btrfs generation numbers.

Modules: driver (the Driver), subvol (libbtrfsutil binding or ioctls), ioctl (raw
UAPI), quota (qgroups), changes (the O(changes) change finder).
"""

"""Calls into the kernel the drivers share: mounts, loop devices, statfs, project quotas,
ioctl request numbers."""

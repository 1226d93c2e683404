"""Calls into the kernel the drivers share: mounts, loop devices, statfs, syncfs, project quotas,
ioctl request numbers."""

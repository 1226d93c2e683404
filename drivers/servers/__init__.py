"""Servers that give engines the drivers: Docker's graph driver plugin protocol."""

"""overlay2: overlayfs graph driver (import graphdrivers.overlay)."""

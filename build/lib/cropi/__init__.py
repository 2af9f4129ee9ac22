"""cropi: data-efficient RLVR by off-policy influence guidance (CROPI, arXiv 2510.26491) on Ray."""

__version__ = "0.1.0"

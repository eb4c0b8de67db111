"""IMAGIO shared core: scene access, geometry (RAS/LPS), I/O, bundles, phantom, report, CLI."""

__version__ = "0.1.0"

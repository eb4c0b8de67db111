"""The margin verdict's policy: its constants as one frozen parameter set (unit and source, one line each).

Kept free of imports so that the command line's parser (``imagio margin --help``) reads its defaults here.
The 95 % interval the verdict must be clear of to be confident is ``uncertainty.margin_uncertainty``'s.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VerdictPolicy:
    """How a minimal ablative margin (MAM) becomes ``sufficient`` / ``insufficient`` / ``incomplete``."""

    # mm; default threshold, "sufficient" at or above it: local tumour progression rises below a 5 mm minimal
    # margin (colorectal liver metastases: Wang et al., Cardiovasc Intervent Radiol 2013;36:166; meta-analysis of
    # 21 studies, relative risk 3.6 below 5 mm: Chlorogiannis et al., Cancers 2023;15:5806)
    threshold_mm: float = 5.0
    # mm; a MAM below this is "incomplete": tumour outside the zone (the signed margin is negative there): definition
    incomplete_below_mm: float = 0.0
    # the result is flagged when the registration error (mm) is at least this x |MAM|: chosen here
    registration_flag_ratio: float = 0.5


VERDICT = VerdictPolicy()

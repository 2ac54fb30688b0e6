"""Experiments that run training: `mmpo compare`, `mmpo sweep` and `mmpo demo` (their reading and plotting of
finished runs lives in :mod:`mmpo.reports`)."""

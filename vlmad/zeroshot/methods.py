"""Importing this module registers the built-in zero-shot methods."""

from vlmad.zeroshot import anomalyclip, musc, winclip  # noqa: F401

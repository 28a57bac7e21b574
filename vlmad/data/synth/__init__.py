"""The LOCO-style scene generator: procedural categories, imaging-environment shifts and the writer.

Import :mod:`vlmad.data.synth.generate` for :func:`generate` and :class:`SynthConfig`; this package module
stays light so that importing one submodule does not import them all.
"""

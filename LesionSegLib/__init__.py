"""Pieces shared by LesionSeg's Slicer modules (SpleenSeg, ProstateMetSeg, LesionSegTraining).

Installed beside the modules as a package, the way Slicer installs DICOMLib. Every submodule except
``widgets`` is Qt-free: it takes the MRML scene and nodes as arguments and imports neither ``qt``, ``ctk``
nor ``slicer.app``, so it runs and is tested on PyPI's slicer-core. ``widgets`` holds the thin Qt parts.
This file imports nothing, so ``import LesionSegLib.comparison`` never pulls Qt in.
"""

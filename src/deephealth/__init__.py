"""Deep Health: decision support for pediatric chest X-rays.

Classifies a chest radiograph as no pneumonia (0), bacterial pneumonia (1) or viral pneumonia (2)
with calibrated probabilities and a class activation heatmap. Decision support, not a diagnosis.

This module imports nothing heavy; import submodules for functionality.
"""

__version__ = "0.3.0"

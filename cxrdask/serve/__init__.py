"""One image: prediction, Grad-CAM heatmaps, and the web page."""

"""File formats the agent takes, stdlib only (the host imports it too)."""

# Directory walks pick files by extension (like the vendor samples).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")

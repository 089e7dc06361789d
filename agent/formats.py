"""Which files the agent takes as images and how it names what it writes, by file-name suffix.

Imports nothing, so the host can use the same lists (``from agent.formats import IMAGE_EXTENSIONS``)
without numpy or Pillow. Python 3.7 compatible.
"""

# Directory walks pick files by extension (like the vendor samples); a file named on the
# command line or in job.inputs is always tried, whatever its name. Lower case, with the dot.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")

# Labelled copies are JPEGs: labelled/<image>, with ".jpg" added unless the name has one of these.
JPEG_EXTENSIONS = (".jpg", ".jpeg")

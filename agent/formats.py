"""Which files the agent takes as images and how it names what it writes, by file-name suffix.

Imports nothing at its top (the standard library when a name must be cut), so the host can use the same lists (``from agent.formats import IMAGE_EXTENSIONS``)
without numpy or Pillow. Python 3.7 compatible.
"""

# Directory walks pick files by extension (like the vendor samples); a file named on the
# command line or in job.inputs is always tried, whatever its name. Lower case, with the dot.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm")

# Labelled copies are JPEGs: labelled/<image>, with ".jpg" added unless the name has one of these.
JPEG_EXTENSIONS = (".jpg", ".jpeg")
NAME_MAX = 255  # bytes in one file name (ext4, and every filesystem a board has)


def labelled_rel(rel):
    """Where the labelled copy of image ``rel`` (a path under the input root) goes under ``labelled/``: the
    same path, ".jpg" added unless it ends in a JPEG suffix. A name that would then exceed ``NAME_MAX`` bytes
    is cut and ends in a digest of the whole name instead (still unique). The host finds copies by this too."""
    head, sep, name = rel.rpartition("/")
    dot = name.rfind(".")
    if dot <= 0 or name[dot:].lower() not in JPEG_EXTENSIONS:
        name += ".jpg"
    raw = name.encode("utf-8", "surrogateescape")
    if len(raw) > NAME_MAX:
        import hashlib

        tail = "~" + hashlib.sha1(raw).hexdigest()[:12] + ".jpg"
        name = raw[: NAME_MAX - len(tail)].decode("utf-8", "ignore") + tail
    return head + sep + name

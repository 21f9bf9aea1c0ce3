"""truthloop: caption an image, draw the caption, caption the drawing... until a caption repeats."""

__version__ = "0.1.0"

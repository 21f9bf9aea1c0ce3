"""truthloop: caption an image, draw the caption, caption the drawing... until a caption repeats."""

__version__ = "0.1.0"


def __getattr__(name: str):
    """`truthloop.read_run(path)`: a run directory as a RunView (typed `Record`s in `.records`,
    `.summary`, `.config`, `.status`), refusing a run written in a newer format. Imported on
    first use, so `import truthloop` stays light."""
    if name == "read_run":
        from truthloop.store import read_run

        return read_run
    raise AttributeError(f"module 'truthloop' has no attribute {name!r}")

"""Looking back at runs: the runs table, exports (GIF, MP4, contact sheet, drift plot, HTML page)
and, for sweeps, the attractor atlas. Reads runs through the core (store, record, diff) only;
no argument parsing here (that is cli.py's), no torch, no Textual.

Modules: runs (table rows), render (Pillow drawing), video (GIF / MP4), html (the page),
export (all of them in one call).
"""

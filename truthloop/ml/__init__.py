"""The torch stack: everything that imports torch, diffusers, transformers, open_clip or
clip-interrogator lives here, behind one entry point (`backends.load_backends`).

The core (config, loop, store, record, events, diff) never imports this package; `cli.py` hands
the loop a backend factory from here.
"""

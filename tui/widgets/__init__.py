"""The run screens' widgets, one per file: status line, banner, iteration log, caption diff, image
preview, drift sparkline. Each draws what it is given and keeps its own display state."""

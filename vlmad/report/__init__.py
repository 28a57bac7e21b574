"""Tables, plots, image overlays and the HTML report."""

"""Meridian edge: the data plane that geolocates, scores, forwards and streams."""

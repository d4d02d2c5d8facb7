"""Runs over many images: dataset layouts, image files, devices and hosts, the run loop."""

"""An example third-party perceiver-mt task plugin."""

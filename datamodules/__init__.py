"""Built-in DataModules, registered through the `perceiver_mt.datamodules` entry points."""

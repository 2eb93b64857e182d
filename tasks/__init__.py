"""Built-in task plugins, registered through the `perceiver_mt.tasks` entry points."""
